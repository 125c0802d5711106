"""A small deterministic FlashRAG corpus of made-up people, for tests and the benchmark.

Each passage names one unique person, so "which passage answers a question about X" has one answer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from research_rl.atomic import atomic_write_text

SYLLABLES = ["ka", "lo", "mir", "ze", "tan", "vor", "qui", "bel", "dra", "nox", "fen", "rus", "ul", "ith", "gar"]
PROFESSIONS = ["painter", "astronomer", "sailor", "engineer", "poet", "botanist", "architect", "chemist"]
CITIES = ["Velmora", "Ostrakan", "Pellinor", "Quasseth", "Drumvale", "Ishkara", "Tolvane", "Brenmoor"]


def _name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def synthetic_people(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n people with unique names, each with a profession and a birth city."""
    rng = random.Random(seed)
    names: dict[str, None] = {}
    word_sets: set[frozenset[str]] = set()
    while len(names) < n:
        name = _name(rng)
        words = frozenset(name.split())
        if words not in word_sets:  # "Mirka Noxgar" and "Noxgar Mirka" would answer for each other
            word_sets.add(words)
            names[name] = None
    return [{"name": name, "profession": rng.choice(PROFESSIONS), "city": rng.choice(CITIES)} for name in names]


def passage(person: dict[str, str]) -> str:
    name = person["name"]
    return f'"{name}"\n{name} is a {person["profession"]} who was born in {person["city"]}.'


def write_synthetic_corpus(path: Path, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Write n passages (ids "0".."n-1", row i is person i) and return the people."""
    people = synthetic_people(n, seed)
    lines = [json.dumps({"id": str(i), "contents": passage(person)}) for i, person in enumerate(people)]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return people


def clustered_unit_vectors(
    n: int, dim: int, *, clusters: int = 1000, spread: float = 1.0, seed: int = 0, start: int = 0
) -> np.ndarray:
    """Rows [start, start + n) of a deterministic clustered set of unit vectors (float32).

    Row i lies near cluster centre i % clusters (centre plus Gaussian noise of `spread` times the centre's
    scale, then normalized), so nearest neighbours are mostly cluster mates and an approximate index's
    recall against exact search means something (uniform random vectors have no structure to exploit).
    Any slice can be generated alone, so a 2M x 768 set can be written out chunk by chunk."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim), dtype=np.float32)
    rows = np.arange(start, start + n)
    noise = np.random.default_rng([seed, start]).standard_normal((n, dim), dtype=np.float32)
    vectors = centres[rows % clusters] + spread * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors
