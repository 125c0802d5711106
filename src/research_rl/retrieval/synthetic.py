"""A small deterministic FlashRAG corpus of made-up people, for tests and the benchmark.

Each passage names one unique person, so "which passage answers a question about X" has one answer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

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
