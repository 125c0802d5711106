"""The toy world: determinism, the publishers' file shapes, and questions that need the retriever."""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from research_rl import paths
from research_rl.data import toyworld as tw
from research_rl.data.benchmarks import read_raw

REPO = Path(__file__).resolve().parents[1]
NON_CHAIN = {"comparison", "bridge_comparison"}


def load_cfg(tmp_path: Path | None = None) -> dict:
    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    if tmp_path is not None:
        cfg["paths"]["data"] = str(tmp_path / "data")
        cfg["toyworld"]["out_dir"] = str(tmp_path / "toyworld")
    return cfg


@pytest.fixture(scope="module")
def world() -> tw.World:
    return tw.build_world(load_cfg()["toyworld"])


@pytest.fixture(scope="module")
def files(world) -> dict[str, bytes]:
    return tw.world_files(world)


@pytest.fixture(scope="module")
def all_questions(world) -> list[tw.Question]:
    return [q for questions in world.question_sets().values() for q in questions]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(files):
    settings = load_cfg()["toyworld"]
    assert tw.world_files(tw.build_world(settings)) == files
    other = dict(settings, seed=settings["seed"] + 1)
    changed = tw.world_files(tw.build_world(other))
    assert set(changed) == set(files)
    assert all(changed[name] != files[name] for name in files)


def test_run_writes_every_file_the_config_names_with_checksums(tmp_path):
    cfg = load_cfg(tmp_path)
    tw.run(cfg)
    out = paths.toyworld_dir(cfg)
    sources = [cfg["corpus"], *(s for by_split in cfg["datasets"].values() for s in by_split.values())]
    for source in sources:
        assert (out / PurePosixPath(urlparse(source["url"]).path).name).is_file(), source["url"]
    manifest = out / "SHA256SUMS"
    assert (REPO / cfg["corpus"]["sha256_manifest"]).name == manifest.name
    listed = {}
    for line in manifest.read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    written = {p.name for p in out.iterdir()} - {"SHA256SUMS"}
    assert set(listed) == written
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_entity_counts_and_question_counts_follow_the_config(world):
    settings = load_cfg()["toyworld"]
    kinds = Counter(e.kind for e in world.entities.values())
    assert kinds == {
        "person": settings["n_people"],
        "city": settings["n_cities"],
        "country": settings["n_countries"],
        "organization": settings["n_organizations"],
        "work": settings["n_works"],
    }
    sets = world.question_sets()
    for name, count in settings["questions"].items():
        assert len(sets[name]) == count, name


def test_names_are_unique_and_never_hide_inside_each_other(world):
    words = sorted(
        {w.lower() for e in world.entities.values() for w in e.name.split()}
        - {w.lower() for w in [*tw.ORG_SUFFIXES, *tw.WORK_NOUNS]}
    )
    names_per_entity = [e.name for e in world.entities.values()]
    assert len(set(names_per_entity)) == len(names_per_entity)
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            assert a not in b and b not in a, (a, b)


def test_corpus_is_flashrag_format_short_and_regular(files, world):
    data = files["toywiki.jsonl.gz"]
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    lines = gzip.decompress(data).decode().splitlines()
    assert 1500 <= len(lines) <= 5000
    lead_ids = set(world.summary_of.values())
    ids = []
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"id", "contents"}
        title, text = record["contents"].split("\n", 1)
        assert re.fullmatch(r'"[^"\n]+"', title)
        assert title.strip('"') in text or title.strip('"').split()[0] in text  # the name is spelled out
        if int(record["id"]) in lead_ids:
            # The lead restates the entity's own facts, each as its own passage too.
            facts = [p.text for p in world.passages if p.title == title.strip('"') and int(p.id) not in lead_ids]
            assert all(fact in text for fact in facts)
            assert len(text.split()) <= 120
        else:
            assert len(text.split()) <= 40 and text.count(". ") == 0
        ids.append(record["id"])
    assert ids == [str(i) for i in range(len(lines))]


def test_chain_answers_never_appear_in_their_question(all_questions):
    chains = [q for q in all_questions if q.kind not in NON_CHAIN]
    assert len(chains) > 500
    for q in chains:
        for alias in q.aliases:
            assert alias.lower() not in q.question.lower(), (q.question, alias)


def test_answers_of_each_template_are_spread_over_many_values(all_questions):
    by_template: dict[str, list[str]] = {}
    for q in all_questions:
        by_template.setdefault(q.template, []).append(q.answer)
    assert len(by_template) >= 10
    for template, answers in by_template.items():
        if len(answers) < 20:
            continue
        top_share = Counter(answers).most_common(1)[0][1] / len(answers)
        assert len(set(answers)) >= 2 if template == "same_birth_country" else len(set(answers)) >= 8, template
        assert top_share <= 0.55 if template == "same_birth_country" else top_share <= 0.25, template


def test_comparison_answers_are_not_guessable_from_position(all_questions):
    firsts = [q for q in all_questions if q.template in ("born_first", "work_creator_older")]
    assert len(firsts) >= 20
    answer_first = sum(q.question.index(q.answer) < q.question.index(" or ") for q in firsts)
    assert 0.35 <= answer_first / len(firsts) <= 0.65
    yes_no = [q.answer for q in all_questions if q.template == "same_birth_country"]
    assert 0.35 <= yes_no.count("yes") / len(yes_no) <= 0.65


def test_sets_share_no_question_and_musique_spans_two_to_four_hops(world):
    sets = world.question_sets()
    seen: set[str] = set()
    for questions in sets.values():
        texts = {q.question for q in questions}
        assert len(texts) == len(questions)
        assert not texts & seen
        seen |= texts
    hops = Counter(q.hops for q in sets["musique_train"])
    assert set(hops) == {2, 3, 4} and hops[2] > hops[3] > hops[4] > 0
    assert all(q.hops == 2 and q.kind == "compositional" for q in sets["bamboogle_test"])


def test_every_step_is_supported_by_its_passage(all_questions, world):
    for q in all_questions:
        answers: list[str] = []
        for step in q.steps:
            passage = world.passages[step.fact]
            assert step.answer in passage.text
            query = tw.resolve(step.question, answers)
            assert "#" not in query and passage.title in query  # retrievable by the entity it names
            answers.append(step.answer)
        if q.kind not in NON_CHAIN:
            assert q.answer == q.steps[-1].answer
            # The first hop's entity is the one the question names.
            assert world.passages[q.steps[0].fact].title in q.question


def test_musique_jsonl_shape(files):
    records = [json.loads(line) for line in files["musique_ans_v1.0_train.jsonl"].decode().splitlines()]
    assert len(records) == load_cfg()["toyworld"]["questions"]["musique_train"]
    unanswerable = [r for r in records if not r["answerable"]]
    assert 0.03 <= len(unanswerable) / len(records) <= 0.07
    for record in records:
        assert set(record) == {
            "id",
            "paragraphs",
            "question",
            "question_decomposition",
            "answer",
            "answer_aliases",
            "answerable",
        }
        match = re.fullmatch(r"(\d)hop\d*__(\d+(?:_\d+)+)", record["id"])
        assert match and int(match.group(1)) == len(record["question_decomposition"])
        assert 10 <= len(record["paragraphs"]) <= 20
        assert [p["idx"] for p in record["paragraphs"]] == list(range(len(record["paragraphs"])))
        for k, step in enumerate(record["question_decomposition"]):
            assert (k > 0) == ("#" in step["question"])
            idx = step["paragraph_support_idx"]
            if idx is None:
                assert not record["answerable"]
                continue
            paragraph = record["paragraphs"][idx]
            assert paragraph["is_supporting"] and step["answer"] in paragraph["paragraph_text"]
        assert record["question_decomposition"][-1]["answer"] == record["answer"]
    assert all(any(s["paragraph_support_idx"] is None for s in r["question_decomposition"]) for r in unanswerable)


def test_hotpot_and_2wiki_shapes(files):
    hotpot = json.loads(files["hotpot_dev_distractor_v1.json"])
    archive = zipfile.ZipFile(io.BytesIO(files["2wikimultihopqa.zip"]))
    assert sorted(archive.namelist()) == ["dev.json", "train.json"]
    assert {info.date_time for info in archive.infolist()} == {tw.ZIP_DATE_TIME}
    twowiki = json.loads(archive.read("dev.json"))
    assert {r["type"] for r in hotpot} == {"bridge", "comparison"}
    assert {r["type"] for r in twowiki} == {"compositional", "comparison", "inference", "bridge_comparison"}
    assert {r["level"] for r in hotpot} <= {"easy", "medium", "hard"}
    for record in hotpot + twowiki:
        assert len(record["context"]) == 10
        pages = dict((title, sentences) for title, sentences in record["context"])
        for title, sentence in record["supporting_facts"]:
            assert 0 <= sentence < len(pages[title])
    for record in twowiki:
        assert all(len(triple) == 3 for triple in record["evidences"])
        assert record["evidences"][-1][2] == record["answer"] or record["type"] != "compositional"


def test_bamboogle_csv_has_two_quoted_columns(files):
    rows = list(csv.reader(io.StringIO(files["bamboogle.csv"].decode())))
    assert rows[0] == ["Question", "Answer"]
    assert len(rows) == 1 + load_cfg()["toyworld"]["questions"]["bamboogle_test"]
    assert all(len(row) == 2 and row[0].endswith("?") for row in rows[1:])


def test_the_real_parsers_read_every_generated_file(tmp_path, files):
    expected = load_cfg()["toyworld"]["questions"]
    for name in ("hotpot_dev_distractor_v1.json", "musique_ans_v1.0_dev.jsonl", "bamboogle.csv"):
        (tmp_path / name).write_bytes(files[name])
    (tmp_path / "dev.json").write_bytes(zipfile.ZipFile(io.BytesIO(files["2wikimultihopqa.zip"])).read("dev.json"))
    assert len(read_raw("hotpotqa", tmp_path / "hotpot_dev_distractor_v1.json")) == expected["hotpotqa_dev"]
    assert len(read_raw("2wikimultihopqa", tmp_path / "dev.json")) == expected["2wikimultihopqa_dev"]
    assert len(read_raw("bamboogle", tmp_path / "bamboogle.csv")) == expected["bamboogle_test"]
    musique = read_raw("musique", tmp_path / "musique_ans_v1.0_dev.jsonl")
    assert len(musique) == expected["musique_dev"]
    country = [r for r in musique if any(" of " in a for a in r["golden_answers"][1:])]
    assert country  # countries carry their long name as an alias


def test_demonstrations_come_from_musique_train_and_are_deterministic(world):
    demos = tw.demonstrations(world, 50, seed=7)
    assert demos == tw.demonstrations(world, 50, seed=7)
    assert demos != tw.demonstrations(world, 50, seed=8)
    train_ids = {tw.musique_id(q) for q in world.question_sets()["musique_train"]}
    assert {d["id"] for d in demos} <= train_ids
    for demo in demos:
        steps = demo["question_decomposition"]
        assert demo["answer"] == steps[-1]["answer"] == demo["golden_answers"][0]
        for step in steps:
            assert "#" not in step["query"] and step["answer"] in step["contents"]
            assert step["contents"].startswith(f'"{step["title"]}"\n')
    assert len(tw.demonstrations(world, 700, seed=1)) == 700  # more than the pool: cycles
    dev = tw.demonstrations(world, 30, seed=7, split="musique_dev")  # benchmarks/base_model_reading.py
    dev_ids = {tw.musique_id(q) for q in world.question_sets()["musique_dev"]}
    assert {d["id"] for d in dev} <= dev_ids and not dev_ids & train_ids


def test_bad_settings_fail_with_the_key_named():
    settings = load_cfg()["toyworld"]
    with pytest.raises(ValueError, match="toyworld.n_people"):
        tw.build_world({k: v for k, v in settings.items() if k != "n_people"})
    with pytest.raises(ValueError, match="n_cities"):
        tw.build_world(dict(settings, n_cities=3))
    too_many = copy.deepcopy(settings)
    too_many["questions"]["bamboogle_test"] = 5000
    with pytest.raises(ValueError, match="bamboogle_test"):
        tw.build_world(too_many).question_sets()


def test_musique_train_hop_weights_change_only_the_train_set():
    settings = load_cfg()["toyworld"]
    two_hop_heavy = copy.deepcopy(settings)
    two_hop_heavy["musique_hop_weights"] = {"train": {2: 0.9, 3: 0.05, 4: 0.05}, "dev": {2: 0.5, 3: 0.3, 4: 0.2}}
    even = copy.deepcopy(settings)
    even["musique_hop_weights"] = {"train": {2: 0.5, 3: 0.3, 4: 0.2}, "dev": {2: 0.5, 3: 0.3, 4: 0.2}}
    heavy_sets = tw.build_world(two_hop_heavy).question_sets()
    even_sets = tw.build_world(even).question_sets()
    heavy_train = Counter(q.hops for q in heavy_sets["musique_train"])
    even_train = Counter(q.hops for q in even_sets["musique_train"])
    assert heavy_train[2] / sum(heavy_train.values()) > 0.8 > even_train[2] / sum(even_train.values())
    for name in ("bamboogle_test", "hotpotqa_dev", "2wikimultihopqa_dev", "musique_dev"):
        assert [q.question for q in heavy_sets[name]] == [q.question for q in even_sets[name]], name


def test_musique_hop_weights_name_a_bad_hop_count():
    settings = copy.deepcopy(load_cfg()["toyworld"])
    settings["musique_hop_weights"] = {"train": {5: 1.0}}
    with pytest.raises(ValueError, match="musique_hop_weights.train"):
        tw.build_world(settings).question_sets()
