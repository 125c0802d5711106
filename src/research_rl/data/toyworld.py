"""The embedded default's toy world: a fictional encyclopedia and multi-hop questions over it.

No hub downloads are possible in the default, so it builds a small "Wikipedia" deterministically from a
seed (DESIGN.md section 6): people, cities, countries, organizations and creative works with invented,
pronounceable names, and relations between them. Every fact becomes one short passage and every entity
one summary passage (FlashRAG corpus format). Questions are composed along relation chains (2 to 4 hops)
plus comparison questions, and written out in each benchmark's native raw format so that the real
parsers and downloader run on them.

The wording is deliberately regular (one short sentence per fact, the entity's name spelled out) because
a tiny language model is warmed up on it and then trained with RL to search it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research_rl import paths
from research_rl.atomic import atomic_write_bytes
from research_rl.data.jsonl import dumps_line

# File names exactly as config/config.yaml's `corpus` and `datasets` sections reference them.
CORPUS_FILE = "toywiki.jsonl.gz"
MUSIQUE_FILES = {"train": "musique_ans_v1.0_train.jsonl", "dev": "musique_ans_v1.0_dev.jsonl"}
HOTPOT_FILE = "hotpot_dev_distractor_v1.json"
TWOWIKI_FILE = "2wikimultihopqa.zip"
BAMBOOGLE_FILE = "bamboogle.csv"
SUMS_FILE = "SHA256SUMS"

# A fixed zip timestamp so the same seed gives byte-identical archives.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
UNANSWERABLE_FRACTION = 0.05

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "", "n", "r", "l", "s")

OCCUPATIONS = (
    "painter",
    "poet",
    "engineer",
    "physician",
    "composer",
    "chemist",
    "architect",
    "judge",
    "astronomer",
    "sculptor",
    "historian",
    "merchant",
)
CITY_KINDS = ("port", "mountain", "river", "market", "university", "garden")
COUNTRY_FORMS = ("Republic", "Kingdom", "Federation", "Commonwealth", "Principality")
ORG_SUFFIXES = {
    "Institute": "research institute",
    "Company": "trading company",
    "Society": "learned society",
    "Bank": "bank",
    "Foundation": "charitable foundation",
    "Guild": "craft guild",
    "Press": "publishing house",
    "Academy": "school of the arts",
}
WORK_NOUNS = {
    "Sonata": "sonata",
    "Symphony": "symphony",
    "Chronicles": "novel",
    "Tales": "story collection",
    "Portrait": "painting",
    "Garden": "painting",
    "Voyage": "film",
    "Elegy": "poem",
    "Cathedral": "building",
    "Atlas": "book",
}

# One sentence per fact; `{s}` is the subject's mention, `{o}` the object's.
FACT_TEXT = {
    "born_in": "{s} was born in the city of {o}.",
    "birth_year": "{s} was born in the year {o}.",
    "works_for": "{s} worked for {o}.",
    "spouse": "{s} was married to {o}.",
    "mentor": "{s} was a student of {o}.",
    "located_in": "{s} is a city in the country of {o}.",
    "capital": "The capital of {s} is {o}.",
    "founded_by": "{S} was founded by {o}.",
    "headquartered_in": "{S} is headquartered in {o}.",
    "created_by": "{s} is a {kind} created by {o}.",
    "released_in": "{s} was first released in {o}.",
}
# The single-hop question that each relation answers; `{x}` is a name or a "#k" back-reference.
SUBQUESTION = {
    "born_in": "In which city was {x} born?",
    "birth_year": "In what year was {x} born?",
    "works_for": "Which organization did {x} work for?",
    "spouse": "Who was {x} married to?",
    "mentor": "Who was the teacher of {x}?",
    "located_in": "In which country is {x}?",
    "capital": "What is the capital of {x}?",
    "founded_by": "Who founded {x}?",
    "headquartered_in": "In which city is {x} headquartered?",
    "created_by": "Who created {x}?",
}
# Relation labels in the evidence triples of 2WikiMultiHopQA (Wikidata-style property names).
EVIDENCE_LABEL = {
    "born_in": "place of birth",
    "birth_year": "date of birth",
    "works_for": "employer",
    "spouse": "spouse",
    "mentor": "student of",
    "located_in": "country",
    "capital": "capital",
    "founded_by": "founded by",
    "headquartered_in": "headquarters location",
    "created_by": "creator",
    "released_in": "publication date",
}
# Order of the sentences on an entity's page (HotpotQA/2Wiki context): summary first, then these.
PAGE_ORDER = (
    "born_in",
    "birth_year",
    "works_for",
    "spouse",
    "mentor",
    "located_in",
    "capital",
    "founded_by",
    "headquartered_in",
    "created_by",
    "released_in",
)


@dataclass(frozen=True)
class Template:
    """A chain question: start at an entity of `start_kind`, follow `path`, answer with the last object."""

    name: str
    start_kind: str
    path: tuple[str, ...]
    text: str
    kind: str = "compositional"  # 2WikiMultiHopQA's type: compositional | inference


CHAIN_TEMPLATES = (
    Template("work_creator_birthcity", "work", ("created_by", "born_in"), "In which city was the creator of {e} born?"),
    Template(
        "work_creator_birthyear", "work", ("created_by", "birth_year"), "In what year was the creator of {e} born?"
    ),
    Template("person_birthcountry", "person", ("born_in", "located_in"), "In which country was {e} born?"),
    Template(
        "org_founder_birthcity", "organization", ("founded_by", "born_in"), "In which city was the founder of {e} born?"
    ),
    Template(
        "spouse_employer", "person", ("spouse", "works_for"), "Which organization did the spouse of {e} work for?"
    ),
    Template(
        "org_hq_country", "organization", ("headquartered_in", "located_in"), "In which country is {e} headquartered?"
    ),
    Template("teacher_birthyear", "person", ("mentor", "birth_year"), "In what year was the teacher of {e} born?"),
    Template(
        "work_creator_country",
        "work",
        ("created_by", "born_in", "located_in"),
        "In which country was the creator of {e} born?",
    ),
    Template(
        "work_creator_employer_city",
        "work",
        ("created_by", "works_for", "headquartered_in"),
        "In which city is the employer of the creator of {e} headquartered?",
    ),
    Template(
        "person_birth_capital",
        "person",
        ("born_in", "located_in", "capital"),
        "What is the capital of the country where {e} was born?",
    ),
    Template(
        "work_creator_capital",
        "work",
        ("created_by", "born_in", "located_in", "capital"),
        "What is the capital of the country where the creator of {e} was born?",
    ),
    Template(
        "spouse_employer_country",
        "person",
        ("spouse", "works_for", "headquartered_in", "located_in"),
        "In which country is the employer of the spouse of {e} headquartered?",
    ),
    Template(
        "grand_teacher", "person", ("mentor", "mentor"), "Who was the academic grandparent of {e}?", kind="inference"
    ),
)
COMPARISON_TEMPLATES = ("born_first", "same_birth_country", "work_creator_older")

# Which question shapes each generated set draws, with weights (DESIGN: MuSiQue-, HotpotQA-, 2Wiki- and
# Bamboogle-shaped). MuSiQue sets are drawn by hop count instead (see _draw_musique).
SET_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "bamboogle_test": (("chain2", 1.0),),
    "hotpotqa_dev": (("chain2", 0.7), ("born_first", 0.15), ("same_birth_country", 0.15)),
    "2wikimultihopqa_dev": (
        ("chain2", 0.35),
        ("born_first", 0.1),
        ("same_birth_country", 0.1),
        ("inference", 0.2),
        ("work_creator_older", 0.25),
    ),
}
SET_MIX["2wikimultihopqa_train"] = SET_MIX["2wikimultihopqa_dev"]
# MuSiQue-Ans by hop count: dev 1252/760/405 of 2417 (the default for both splits);
# `toyworld.musique_hop_weights` sets each split's weights.
MUSIQUE_HOP_WEIGHTS = {2: 0.5, 3: 0.3, 4: 0.2}
# Smaller sets are drawn first so that MuSiQue train, the largest, takes what is left; sets never share
# a question (no train/test leakage).
SET_ORDER = (
    "bamboogle_test",
    "hotpotqa_dev",
    "2wikimultihopqa_dev",
    "2wikimultihopqa_train",
    "musique_dev",
    "musique_train",
)


@dataclass
class Entity:
    id: str
    kind: str  # person | city | country | organization | work
    name: str
    aliases: tuple[str, ...]  # the name first
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def mention(self) -> str:
        """How running text names it: organizations take the article ("the Doran Institute")."""
        return f"the {self.name}" if self.kind == "organization" else self.name


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return f'"{self.title}"\n{self.text}'


@dataclass(frozen=True)
class Fact:
    id: int  # also the number of its passage in the corpus
    subject: str  # entity id
    relation: str
    object: str  # entity id, or a year as digits
    text: str


@dataclass(frozen=True)
class Step:
    """One hop: its question (later hops say "#k" for the k-th answer), its answer and its fact."""

    question: str
    answer: str
    fact: int


@dataclass(frozen=True)
class Question:
    template: str
    kind: str  # compositional | inference | comparison | bridge_comparison
    question: str
    answer: str
    aliases: tuple[str, ...]  # the answer first
    steps: tuple[Step, ...]

    @property
    def hops(self) -> int:
        return len(self.steps)


@dataclass
class World:
    seed: int
    settings: dict[str, Any]
    entities: dict[str, Entity]
    passages: list[Passage]
    facts: dict[int, Fact]
    summary_of: dict[str, int]  # entity id -> passage number of its summary
    index: dict[tuple[str, str], Fact]  # (subject, relation) -> fact
    _sets: dict[str, list[Question]] | None = None

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]

    def fact(self, subject: str, relation: str) -> Fact | None:
        return self.index.get((subject, relation))

    def display(self, value: str) -> str:
        """The name of an entity id, or a literal (a year) as it is."""
        entity = self.entities.get(value)
        return entity.name if entity else value

    def aliases(self, value: str) -> tuple[str, ...]:
        entity = self.entities.get(value)
        return entity.aliases if entity else (value,)

    def page(self, entity_id: str) -> list[tuple[str, int]]:
        """The entity's page as (sentence, passage number): its summary, then its facts in a fixed order."""
        summary = self.summary_of[entity_id]
        page = [(self.passages[summary].text, summary)]
        for relation in PAGE_ORDER:
            fact = self.fact(entity_id, relation)
            if fact is not None:
                page.append((fact.text, fact.id))
        return page

    def question_sets(self) -> dict[str, list[Question]]:
        """Every generated question set, keyed like `toyworld.questions` in the config (cached)."""
        if self._sets is None:
            self._sets = build_question_sets(self)
        return self._sets


# ----------------------------------------------------------------------------------------------- names


def _fixed_vocabulary() -> set[str]:
    """Lower-case words of the fixed wording; invented names must not contain or hide inside them."""
    texts = [
        *OCCUPATIONS,
        *CITY_KINDS,
        *COUNTRY_FORMS,
        *ORG_SUFFIXES,
        *ORG_SUFFIXES.values(),
        *WORK_NOUNS,
        *WORK_NOUNS.values(),
        *FACT_TEXT.values(),
        *SUBQUESTION.values(),
        *(t.text for t in CHAIN_TEMPLATES),
        "summary officially country city person yes no first",
    ]
    words = {w.strip(".,?#{}").lower() for text in texts for w in text.split()}
    return {w for w in words if len(w) >= 3}


def make_names(rng: random.Random, n: int) -> list[str]:
    """`n` unique capitalised pseudo-words; none is a substring of another or of the fixed wording.

    The substring rule keeps answers from hiding inside questions ("Tessa" in "Tessaro") and keeps
    surnames usable as aliases.
    """
    vocabulary = _fixed_vocabulary()
    names: list[str] = []
    taken: list[str] = []
    attempts = 0
    while len(names) < n:
        attempts += 1
        if attempts > 500 * n + 1000:
            raise ValueError(f"toyworld: could not invent {n} distinct names; lower the entity counts")
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        if len(word) < 4:
            continue
        if any(word in other or other in word for other in taken):
            continue
        if any(word in v or v in word for v in vocabulary):
            continue
        taken.append(word)
        names.append(word.capitalize())
    return names


# ----------------------------------------------------------------------------------------------- world


REQUIRED_SETTINGS = ("seed", "n_people", "n_cities", "n_countries", "n_organizations", "n_works", "questions")


def _check_settings(settings: dict[str, Any]) -> None:
    for key in REQUIRED_SETTINGS:
        if key not in settings:
            raise ValueError(f"toyworld: config key toyworld.{key} is missing")
    minimum = {"n_people": 20, "n_cities": 2, "n_countries": 2, "n_organizations": 2, "n_works": 2}
    for key, low in minimum.items():
        if not isinstance(settings[key], int) or settings[key] < low:
            raise ValueError(f"toyworld: toyworld.{key} must be an integer >= {low}, got {settings[key]!r}")
    if settings["n_cities"] < settings["n_countries"]:
        raise ValueError("toyworld: toyworld.n_cities must be >= toyworld.n_countries (each country needs a capital)")


def build_world(settings: dict[str, Any]) -> World:
    """The encyclopedia for `settings` (the config's `toyworld` section); pure and deterministic."""
    _check_settings(settings)
    rng = random.Random(f"toyworld:{settings['seed']}")
    counts = [settings[k] for k in ("n_countries", "n_cities", "n_people", "n_organizations", "n_works")]
    names = iter(make_names(rng, counts[0] + counts[1] + 2 * counts[2] + counts[3] + counts[4]))
    entities: dict[str, Entity] = {}
    relations: list[tuple[str, str, str]] = []

    def add(entity_kind: str, number: int, name: str, aliases: tuple[str, ...], **attrs: Any) -> Entity:
        entity = Entity(f"{entity_kind}/{number}", entity_kind, name, aliases, attrs)
        entities[entity.id] = entity
        return entity

    countries = []
    for i in range(settings["n_countries"]):
        short = next(names)
        long = f"{rng.choice(COUNTRY_FORMS)} of {short}"
        countries.append(add("country", i, short, (short, long), long_name=long))
    cities = []
    for i in range(settings["n_cities"]):
        # Round robin: every country gets a capital first, then countries stay equal in size so that no
        # country is a good blind guess for "in which country" questions.
        country = countries[i % len(countries)]
        city = add("city", i, next(names), (), size=rng.choice(CITY_KINDS))
        city.aliases = (city.name,)
        cities.append(city)
        relations.append((city.id, "located_in", country.id))
        if i < len(countries):
            relations.append((country.id, "capital", city.id))
    people = []
    for i in range(settings["n_people"]):
        first, surname = next(names), next(names)
        person = add(
            "person",
            i,
            f"{first} {surname}",
            (f"{first} {surname}", surname),
            occupation=rng.choice(OCCUPATIONS),
            year=rng.randint(1780, 1960),
        )
        people.append(person)
        relations.append((person.id, "born_in", rng.choice(cities).id))
        relations.append((person.id, "birth_year", str(person.attrs["year"])))
    orgs = []
    # Headquarters cycle through the countries too (a shuffled city list, one city per country per round).
    hq_cities = sorted(cities, key=lambda c: (int(c.id.split("/")[1]) // len(countries), rng.random()))
    for i in range(settings["n_organizations"]):
        word, suffix = next(names), rng.choice(sorted(ORG_SUFFIXES))
        org = add("organization", i, f"{word} {suffix}", (f"{word} {suffix}", word), kind=ORG_SUFFIXES[suffix])
        orgs.append(org)
        relations.append((org.id, "founded_by", rng.choice(people).id))
        relations.append((org.id, "headquartered_in", hq_cities[i % len(hq_cities)].id))
    creators = rng.sample(people, max(2, len(people) * 2 // 5))
    for i in range(settings["n_works"]):
        word, noun = next(names), rng.choice(sorted(WORK_NOUNS))
        creator = rng.choice(creators)
        work = add("work", i, f"{word} {noun}", (f"{word} {noun}",), kind=WORK_NOUNS[noun])
        relations.append((work.id, "created_by", creator.id))
        relations.append((work.id, "released_in", str(creator.attrs["year"] + rng.randint(20, 60))))
    for person in people:
        if rng.random() < 0.7:
            relations.append((person.id, "works_for", rng.choice(orgs).id))
    married = rng.sample(people, (len(people) * 2 // 5) // 2 * 2)
    for a, b in zip(married[0::2], married[1::2], strict=True):
        relations += [(a.id, "spouse", b.id), (b.id, "spouse", a.id)]
    for person in people:
        year = person.attrs["year"]
        elders = [p for p in people if 15 <= year - p.attrs["year"] <= 50]
        if elders and rng.random() < 0.5:
            relations.append((person.id, "mentor", rng.choice(elders).id))
    return _assemble(settings, entities, relations)


def _fact_text(entities: dict[str, Entity], subject: str, relation: str, obj: str) -> str:
    s = entities[subject]
    o = entities[obj].mention if obj in entities else obj
    text = FACT_TEXT[relation].format(
        s=s.mention, S=s.mention[:1].upper() + s.mention[1:], o=o, kind=s.attrs.get("kind", "")
    )
    return text


def _summary_text(entity: Entity) -> str:
    if entity.kind == "person":
        return f"{entity.name} was a {entity.attrs['occupation']}."
    if entity.kind == "city":
        return f"{entity.name} is a {entity.attrs['size']} city."
    if entity.kind == "country":
        return f"{entity.name}, officially the {entity.attrs['long_name']}, is a country."
    if entity.kind == "organization":
        return f"The {entity.name} is a {entity.attrs['kind']}."
    return f"{entity.name} is a {entity.attrs['kind']}."


def _assemble(settings: dict[str, Any], entities: dict[str, Entity], relations: list[tuple[str, str, str]]) -> World:
    """Number the passages: for each entity its summary, then one passage per fact about it."""
    by_subject: dict[str, dict[str, str]] = {}
    for subject, relation, obj in relations:
        by_subject.setdefault(subject, {})[relation] = obj
    passages: list[Passage] = []
    facts: dict[int, Fact] = {}
    summary_of: dict[str, int] = {}
    index: dict[tuple[str, str], Fact] = {}
    for entity in entities.values():
        own = by_subject.get(entity.id, {})
        fact_texts = [
            (relation, own[relation], _fact_text(entities, entity.id, relation, own[relation]))
            for relation in PAGE_ORDER
            if relation in own
        ]
        # A lead paragraph that restates the entity's facts, as a Wikipedia lead does: a search for any one
        # fact about the entity then ranks a passage holding it first, whichever of the two wins.
        lead = " ".join([_summary_text(entity)] + [text for _, _, text in fact_texts])
        summary_of[entity.id] = len(passages)
        passages.append(Passage(str(len(passages)), entity.name, lead))
        for relation, obj, text in fact_texts:
            fact = Fact(len(passages), entity.id, relation, obj, text)
            passages.append(Passage(str(fact.id), entity.name, fact.text))
            facts[fact.id] = fact
            index[(entity.id, relation)] = fact
    return World(int(settings["seed"]), dict(settings), entities, passages, facts, summary_of, index)


# -------------------------------------------------------------------------------------------- questions


def chain_question(world: World, template: Template, start: Entity) -> Question | None:
    """Follow the template's relations from `start`; None when a link is missing or the answer leaks."""
    steps: list[Step] = []
    current = start.id
    for hop, relation in enumerate(template.path):
        fact = world.fact(current, relation)
        if fact is None:
            return None
        subject = start.mention if hop == 0 else f"#{hop}"
        question = SUBQUESTION[relation].format(x=subject)
        if hop == 0:
            question = question[:1].upper() + question[1:]
        steps.append(Step(question, world.display(fact.object), fact.id))
        current = fact.object
    text = template.text.format(e=start.mention)
    aliases = world.aliases(current)
    # Guard against an answer that could be read off the question (e.g. a spouse's surname).
    if any(alias.lower() in text.lower() for alias in aliases):
        return None
    return Question(template.name, template.kind, text, aliases[0], aliases, tuple(steps))


def _chain_pools(world: World, rng: random.Random) -> dict[str, list[Question]]:
    pools = {}
    for template in CHAIN_TEMPLATES:
        found = [chain_question(world, template, e) for e in world.of_kind(template.start_kind)]
        pool = [q for q in found if q is not None]
        rng.shuffle(pool)
        pools[template.name] = pool
    return pools


def _year_step(world: World, person: str) -> Step:
    fact = world.fact(person, "birth_year")
    assert fact is not None  # every person has a birth year
    return Step(SUBQUESTION["birth_year"].format(x=world.display(person)), fact.object, fact.id)


def _born_first(world: World, rng: random.Random, answer_first: bool) -> Question | None:
    a, b = rng.sample(world.of_kind("person"), 2)
    if a.attrs["year"] == b.attrs["year"]:
        return None
    older, younger = (a, b) if a.attrs["year"] < b.attrs["year"] else (b, a)
    x, y = (older, younger) if answer_first else (younger, older)
    steps = (_year_step(world, x.id), _year_step(world, y.id))
    return Question(
        "born_first", "comparison", f"Who was born first, {x.name} or {y.name}?", older.name, older.aliases, steps
    )


def _same_birth_country(world: World, rng: random.Random, answer_yes: bool) -> Question | None:
    def country_steps(person: Entity) -> tuple[str, tuple[Step, Step]]:
        born = world.fact(person.id, "born_in")
        located = world.fact(born.object, "located_in")
        city = world.display(born.object)
        return located.object, (
            Step(SUBQUESTION["born_in"].format(x=person.name), city, born.id),
            Step(SUBQUESTION["located_in"].format(x=city), world.display(located.object), located.id),
        )

    people = world.of_kind("person")
    a = rng.choice(people)
    country_a, steps_a = country_steps(a)
    candidates = [p for p in people if p.id != a.id and (country_steps(p)[0] == country_a) == answer_yes]
    if not candidates:
        return None
    b = rng.choice(candidates)
    _, steps_b = country_steps(b)
    answer = "yes" if answer_yes else "no"
    return Question(
        "same_birth_country",
        "comparison",
        f"Were {a.name} and {b.name} born in the same country?",
        answer,
        (answer,),
        steps_a + steps_b,
    )


def _work_creator_older(world: World, rng: random.Random, answer_first: bool) -> Question | None:
    w1, w2 = rng.sample(world.of_kind("work"), 2)
    c1, c2 = (world.fact(w.id, "created_by") for w in (w1, w2))
    y1, y2 = (world.entities[c.object].attrs["year"] for c in (c1, c2))
    if y1 == y2:
        return None
    first, second = (w1, w2) if y1 < y2 else (w2, w1)
    x, y = (first, second) if answer_first else (second, first)
    steps = []
    for work in (x, y):
        created = world.fact(work.id, "created_by")
        year = world.fact(created.object, "birth_year")
        steps.append(Step(SUBQUESTION["created_by"].format(x=work.name), world.display(created.object), created.id))
        # MuSiQue-style back-reference to the creator found in the step just before.
        steps.append(Step(SUBQUESTION["birth_year"].format(x=f"#{len(steps)}"), year.object, year.id))
    text = f"Which work has the creator who was born first, {x.name} or {y.name}?"
    return Question("work_creator_older", "bridge_comparison", text, first.name, first.aliases, tuple(steps))


COMPARISON_MAKERS: dict[str, Callable[[World, random.Random, bool], Question | None]] = {
    "born_first": _born_first,
    "same_birth_country": _same_birth_country,
    "work_creator_older": _work_creator_older,
}


class _Drawer:
    """Draws distinct questions for all sets from shared pools, so no two sets share a question."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.pools = _chain_pools(world, rng)
        self.used: set[str] = set()
        self.flip: dict[str, int] = {}  # alternates answer position / yes-no so neither is guessable

    def chain(self, names: list[str]) -> Question | None:
        names = [n for n in names if self.pools[n]]
        while names:
            name = self.rng.choice(names)
            question = self.pools[name].pop()
            if question.question not in self.used:
                self.used.add(question.question)
                return question
            names = [n for n in names if self.pools[n]]
        return None

    def comparison(self, name: str) -> Question | None:
        turn = self.flip.get(name, 0)
        for _ in range(200):
            question = COMPARISON_MAKERS[name](self.world, self.rng, turn % 2 == 0)
            if question is not None and question.question not in self.used:
                self.used.add(question.question)
                self.flip[name] = turn + 1
                return question
        return None

    def shape(self, shape: str) -> Question | None:
        if shape == "chain2":
            return self.chain([t.name for t in CHAIN_TEMPLATES if len(t.path) == 2 and t.kind == "compositional"])
        if shape == "inference":
            return self.chain([t.name for t in CHAIN_TEMPLATES if t.kind == "inference"])
        if shape.startswith("hops"):
            hops = int(shape[4:])
            return self.chain([t.name for t in CHAIN_TEMPLATES if len(t.path) == hops and t.kind == "compositional"])
        return self.comparison(shape)

    def draw(self, set_name: str, n: int, mix: dict[str, float]) -> list[Question]:
        mix = dict(mix)
        drawn: list[Question] = []
        while len(drawn) < n:
            if not mix:
                raise ValueError(
                    f"toyworld: only {len(drawn)} distinct questions available for {set_name}, "
                    f"{n} requested; raise the toyworld entity counts or lower the question counts"
                )
            shapes = sorted(mix)
            shape = self.rng.choices(shapes, weights=[mix[s] for s in shapes])[0]
            question = self.shape(shape)
            if question is None:
                del mix[shape]  # that shape is exhausted; the others take its share
            else:
                drawn.append(question)
        return drawn


def musique_mix(settings: dict[str, Any], set_name: str) -> dict[str, float]:
    """The hop-count weights of a MuSiQue set: `toyworld.musique_hop_weights.<split>`, else the dev mix."""
    split = set_name.removeprefix("musique_")
    weights = (settings.get("musique_hop_weights") or {}).get(split) or MUSIQUE_HOP_WEIGHTS
    if any(str(hops) not in ("2", "3", "4") for hops in weights):
        raise ValueError(
            f"toyworld: toyworld.musique_hop_weights.{split} keys must be hop counts 2, 3 or 4, "
            f"got {sorted(map(str, weights))}"
        )
    return {f"hops{int(hops)}": float(weight) for hops, weight in weights.items()}


def build_question_sets(world: World) -> dict[str, list[Question]]:
    """All question sets named in `toyworld.questions` (plus 2Wiki train, which the zip also ships)."""
    counts = dict(world.settings["questions"])
    counts.setdefault("2wikimultihopqa_train", counts.get("2wikimultihopqa_dev", 0))
    unknown = sorted(set(counts) - set(SET_ORDER))
    if unknown:
        raise ValueError(f"toyworld: unknown question sets {unknown} in toyworld.questions; known: {list(SET_ORDER)}")
    drawer = _Drawer(world, random.Random(f"questions:{world.seed}"))
    sets = {}
    for name in SET_ORDER:
        mix = musique_mix(world.settings, name) if name.startswith("musique") else dict(SET_MIX[name])
        sets[name] = drawer.draw(name, int(counts.get(name, 0)), mix)
    return sets


def resolve(question: str, answers: list[str]) -> str:
    """Replace "#k" back-references with the k-th earlier answer (highest k first: "#10" before "#1")."""
    for k in range(len(answers), 0, -1):
        question = question.replace(f"#{k}", answers[k - 1])
    return question


def demonstrations(world: World, n: int, seed: int, split: str = "musique_train") -> list[dict[str, Any]]:
    """`n` MuSiQue-style worked items drawn from one question set: the MuSiQue train set for the base
    model's warm-up (never an evaluation set), the dev set to measure how well a model reads its results.

    Each item: id, question, answer, golden_answers, and question_decomposition, a list of hops with the
    sub-question as MuSiQue writes it ("#1" for an earlier answer), `query` (the same with the answers
    filled in, i.e. what one would search for), the hop's answer and its supporting passage (`contents`
    in FlashRAG corpus format).
    """
    pool = world.question_sets()[split]
    if not pool or n <= 0:
        return []
    rng = random.Random(f"demonstrations:{seed}")
    order: list[Question] = []
    while len(order) < n:  # cycle through reshuffled copies when more are asked than exist
        batch = list(pool)
        rng.shuffle(batch)
        order += batch
    return [_demonstration(world, q) for q in order[:n]]


def _demonstration(world: World, question: Question) -> dict[str, Any]:
    steps, answers = [], []
    for step in question.steps:
        passage = world.passages[step.fact]
        steps.append(
            {
                "question": step.question,
                "query": resolve(step.question, answers),
                "answer": step.answer,
                "title": passage.title,
                "paragraph_text": passage.text,
                "contents": passage.contents,
            }
        )
        answers.append(step.answer)
    return {
        "id": musique_id(question),
        "question": question.question,
        "answer": question.answer,
        "golden_answers": list(question.aliases),
        "question_decomposition": steps,
    }


# ------------------------------------------------------------------------------------ publishers' formats


def musique_id(question: Question) -> str:
    prefix = {2: "2hop", 3: "3hop1", 4: "4hop1"}[question.hops]
    return f"{prefix}__" + "_".join(str(step.fact) for step in question.steps)


def _hex_id(kind: str, seed: int, text: str, length: int) -> str:
    return hashlib.sha1(f"{kind}:{seed}:{text}".encode()).hexdigest()[:length]


def _musique_record(world: World, question: Question, rng: random.Random, answerable: bool) -> dict[str, Any]:
    support = [step.fact for step in question.steps]
    # Hard distractors first: the other facts about the entities on the chain, then anything.
    near = [pid for step in question.steps for _, pid in world.page(world.facts[step.fact].subject)]
    near = sorted(set(near) - set(support))
    total = rng.randint(12, 18)
    distractors = rng.sample(near, min(len(near), (total - len(support)) // 2))
    while len(support) + len(distractors) < total:
        pid = rng.randrange(len(world.passages))
        if pid not in support and pid not in distractors:
            distractors.append(pid)
    removed = None if answerable else rng.choice(support)  # MuSiQue-Full: a needed paragraph is missing
    shown = [pid for pid in support if pid != removed] + distractors
    rng.shuffle(shown)
    position = {pid: idx for idx, pid in enumerate(shown)}
    paragraphs = [
        {
            "idx": idx,
            "title": world.passages[pid].title,
            "paragraph_text": world.passages[pid].text,
            "is_supporting": pid in support,
        }
        for idx, pid in enumerate(shown)
    ]
    decomposition = [
        {
            "id": step.fact,
            "question": step.question,
            "answer": step.answer,
            "paragraph_support_idx": position.get(step.fact),
        }
        for step in question.steps
    ]
    return {
        "id": musique_id(question),
        "paragraphs": paragraphs,
        "question": question.question,
        "question_decomposition": decomposition,
        "answer": question.answer,
        "answer_aliases": list(question.aliases[1:]),
        "answerable": answerable,
    }


def musique_lines(world: World, questions: list[Question], salt: str) -> bytes:
    rng = random.Random(f"musique:{salt}:{world.seed}")
    unanswerable = set(rng.sample(range(len(questions)), round(UNANSWERABLE_FRACTION * len(questions))))
    lines = [dumps_line(_musique_record(world, q, rng, i not in unanswerable)) for i, q in enumerate(questions)]
    return "".join(lines).encode("utf-8")


def _context(world: World, question: Question, rng: random.Random) -> tuple[list, list]:
    """HotpotQA/2Wiki `context` (10 entity pages, gold ones among them) and `supporting_facts`."""
    gold: list[str] = []
    for step in question.steps:
        subject = world.facts[step.fact].subject
        if subject not in gold:
            gold.append(subject)
    others = sorted(set(world.entities) - set(gold))
    pages = gold + rng.sample(others, max(0, 10 - len(gold)))
    rng.shuffle(pages)
    context = [[world.entities[e].name, [text for text, _ in world.page(e)]] for e in pages]
    supporting = []
    for step in question.steps:
        subject = world.facts[step.fact].subject
        sentence = [pid for _, pid in world.page(subject)].index(step.fact)
        supporting.append([world.entities[subject].name, sentence])
    return context, supporting


def hotpot_json(world: World, questions: list[Question]) -> bytes:
    rng = random.Random(f"hotpot:{world.seed}")
    records = []
    for q in questions:
        context, supporting = _context(world, q, rng)
        records.append(
            {
                "_id": _hex_id("hotpot", world.seed, q.question, 24),
                "question": q.question,
                "answer": q.answer,
                "type": "comparison" if q.kind == "comparison" else "bridge",
                "level": rng.choice(("easy", "medium", "hard", "hard")),
                "supporting_facts": supporting,
                "context": context,
            }
        )
    return json.dumps(records, ensure_ascii=False, sort_keys=True).encode("utf-8")


def twowiki_json(world: World, questions: list[Question], salt: str) -> bytes:
    rng = random.Random(f"2wiki:{salt}:{world.seed}")
    records = []
    for q in questions:
        context, supporting = _context(world, q, rng)
        evidences = []
        for step in q.steps:
            fact = world.facts[step.fact]
            evidences.append([world.display(fact.subject), EVIDENCE_LABEL[fact.relation], world.display(fact.object)])
        records.append(
            {
                "_id": _hex_id("2wiki", world.seed, q.question, 32),
                "type": q.kind,
                "question": q.question,
                "answer": q.answer,
                "evidences": evidences,
                "supporting_facts": supporting,
                "context": context,
            }
        )
    return json.dumps(records, ensure_ascii=False, sort_keys=True).encode("utf-8")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip with a fixed timestamp and permissions per member, so equal inputs give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def bamboogle_csv(questions: list[Question]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the csv module quotes fields holding commas or quotes
    writer.writerow(["Question", "Answer"])
    for q in questions:
        writer.writerow([q.question, q.answer])
    return buffer.getvalue().encode("utf-8")


def corpus_gz(world: World) -> bytes:
    """The corpus as gzipped FlashRAG jsonl; mtime 0 and no file name keep it byte-identical per seed."""
    text = "".join(dumps_line({"id": p.id, "contents": p.contents}) for p in world.passages)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def world_files(world: World) -> dict[str, bytes]:
    """Every file the toy world publishes, by file name, SHA256SUMS included."""
    sets = world.question_sets()
    files = {
        CORPUS_FILE: corpus_gz(world),
        MUSIQUE_FILES["train"]: musique_lines(world, sets["musique_train"], "train"),
        MUSIQUE_FILES["dev"]: musique_lines(world, sets["musique_dev"], "dev"),
        HOTPOT_FILE: hotpot_json(world, sets["hotpotqa_dev"]),
        TWOWIKI_FILE: zip_bytes(
            {
                "train.json": twowiki_json(world, sets["2wikimultihopqa_train"], "train"),
                "dev.json": twowiki_json(world, sets["2wikimultihopqa_dev"], "dev"),
            }
        ),
        BAMBOOGLE_FILE: bamboogle_csv(sets["bamboogle_test"]),
    }
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    files[SUMS_FILE] = sums.encode("ascii")
    return files


def statistics(world: World) -> dict[str, Any]:
    """Counts for logs and reports: entities per kind, passages, questions and hops per set."""
    kinds: dict[str, int] = {}
    for entity in world.entities.values():
        kinds[entity.kind] = kinds.get(entity.kind, 0) + 1
    sets = {}
    for name, questions in world.question_sets().items():
        hops: dict[int, int] = {}
        for q in questions:
            hops[q.hops] = hops.get(q.hops, 0) + 1
        sets[name] = {"questions": len(questions), "hops": dict(sorted(hops.items()))}
    return {"entities": kinds, "facts": len(world.facts), "passages": len(world.passages), "sets": sets}


def run(cfg: dict[str, Any]) -> None:
    """Stage `toyworld`: write the corpus and the four benchmarks' raw files under paths.toyworld_dir."""
    world = build_world(cfg["toyworld"])
    out_dir = Path(paths.toyworld_dir(cfg))
    files = world_files(world)
    # SHA256SUMS last: a reader who sees it can trust that the files it lists are complete.
    for name in sorted(files, key=lambda n: n == SUMS_FILE):
        atomic_write_bytes(out_dir / name, files[name])
    stats = statistics(world)
    print(
        f"toyworld: {stats['passages']} passages, "
        + ", ".join(f"{k} {v['questions']}" for k, v in stats["sets"].items())
        + f" -> {out_dir}"
    )
