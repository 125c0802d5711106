"""Raw parsers on hand-written records in the publishers' shapes (not produced by the toy world)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from research_rl.data.benchmarks import BENCHMARKS, MalformedRecord, golden_answers, iter_raw, read_raw

MUSIQUE = {
    "id": "3hop1__9285_5188_23307",
    "paragraphs": [
        {
            "idx": 0,
            "title": "Lake Ontario",
            "paragraph_text": "Lake Ontario lies between Ontario and New York.",
            "is_supporting": False,
        },
        {
            "idx": 1,
            "title": "Gerald Ford",
            "paragraph_text": "Gerald Ford was born in Omaha, Nebraska.",
            "is_supporting": True,
        },
        {"idx": 2, "title": "Omaha", "paragraph_text": "Omaha is the largest city in Nebraska.", "is_supporting": True},
        {"idx": 3, "title": "Nebraska", "paragraph_text": "Nebraska's capital is Lincoln.", "is_supporting": True},
    ],
    "question": "What is the capital of the state where the 38th president was born?",
    "question_decomposition": [
        {"id": 9285, "question": "Who was the 38th president?", "answer": "Gerald Ford", "paragraph_support_idx": 1},
        {"id": 5188, "question": "Where was #1 born?", "answer": "Omaha", "paragraph_support_idx": 2},
        {
            "id": 23307,
            "question": "What is the capital of #2 >> state",
            "answer": "Lincoln",
            "paragraph_support_idx": 3,
        },
    ],
    "answer": "Lincoln",
    "answer_aliases": ["Lincoln, Nebraska", "Lincoln", " Lincoln NE "],
    "answerable": True,
}
HOTPOT = {
    "_id": "5a8b57f25542995d1e6f1371",
    "answer": "yes",
    "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
    "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
    "context": [
        ["Ed Wood", ["Edward Davis Wood Jr. was an American filmmaker.", " He was born in 1924."]],
        ["Scott Derrickson", ["Scott Derrickson is an American director."]],
    ],
    "type": "comparison",
    "level": "hard",
}
TWOWIKI = {
    "_id": "8813f87c0bdd11eba7f7acde48001122",
    "type": "compositional",
    "question": "Who is the mother of the director of film Polish-Russian War?",
    "context": [
        ["Polish-Russian War (film)", ["Polish-Russian War is a 2009 Polish film directed by Xawery Zulawski."]],
        ["Xawery Zulawski", ["Xawery Zulawski is a Polish film director.", "His mother is Malgorzata Braunek."]],
    ],
    "supporting_facts": [["Polish-Russian War (film)", 0], ["Xawery Zulawski", 1]],
    "evidences": [
        ["Polish-Russian War", "director", "Xawery Zulawski"],
        ["Xawery Zulawski", "mother", "Malgorzata Braunek"],
    ],
    "answer": "Malgorzata Braunek",
}
BAMBOOGLE_CSV = (
    "Question,Answer\r\n"
    "Who was president of the United States in the year that Citibank was founded?,james madison\r\n"
    '"What is the capital of the country where the Tigris, a river, rises?",Ankara\r\n'
    "\r\n"
    'Who won the Nobel Prize in the year the first iPhone came out?,"Al Gore, IPCC"\r\n'
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(records: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_musique_record_keeps_aliases_hops_and_decomposition(tmp_path):
    unanswerable = dict(
        MUSIQUE,
        id="2hop__1_2",
        answerable=False,
        question_decomposition=MUSIQUE["question_decomposition"][:2],
        answer_aliases=[],
    )
    records = read_raw("musique", write(tmp_path / "m.jsonl", jsonl([MUSIQUE, unanswerable])))
    first, second = records
    assert first["id"] == MUSIQUE["id"] and first["question"] == MUSIQUE["question"]
    assert first["golden_answers"] == ["Lincoln", "Lincoln, Nebraska", "Lincoln NE"]
    meta = first["metadata"]
    assert meta["hops"] == 3 and meta["type"] == "3hop1" and meta["answerable"] is True
    assert [s["answer"] for s in meta["question_decomposition"]] == ["Gerald Ford", "Omaha", "Lincoln"]
    assert [p["title"] for p in meta["supporting_paragraphs"]] == ["Gerald Ford", "Omaha", "Nebraska"]
    assert second["metadata"]["answerable"] is False and second["metadata"]["hops"] == 2


def test_musique_hops_fall_back_to_the_decomposition(tmp_path):
    record = dict(MUSIQUE, id="custom-7")
    (parsed,) = read_raw("musique", write(tmp_path / "m.jsonl", jsonl([record])))
    assert parsed["metadata"]["hops"] == 3 and parsed["metadata"]["type"] is None


def test_hotpotqa_and_2wiki_json_lists(tmp_path):
    (hotpot,) = read_raw("hotpotqa", write(tmp_path / "h.json", json.dumps([HOTPOT])))
    assert hotpot == {
        "id": HOTPOT["_id"],
        "question": HOTPOT["question"],
        "golden_answers": ["yes"],
        "metadata": {
            "type": "comparison",
            "level": "hard",
            "hops": 2,
            "supporting_facts": {"title": ["Scott Derrickson", "Ed Wood"], "sent_id": [0, 0]},
        },
    }
    (twowiki,) = read_raw("2wikimultihopqa", write(tmp_path / "dev.json", json.dumps([TWOWIKI])))
    assert twowiki["golden_answers"] == ["Malgorzata Braunek"]
    assert twowiki["metadata"]["type"] == "compositional" and twowiki["metadata"]["hops"] == 2
    assert twowiki["metadata"]["evidences"] == TWOWIKI["evidences"]


def test_bamboogle_csv_with_quoted_commas(tmp_path):
    records = read_raw("bamboogle", write(tmp_path / "test.csv", BAMBOOGLE_CSV))
    assert [r["golden_answers"] for r in records] == [["james madison"], ["Ankara"], ["Al Gore, IPCC"]]
    assert records[1]["question"].startswith("What is the capital of the country where the Tigris, a river")
    assert len({r["id"] for r in records}) == 3


def test_bamboogle_as_flashrag_jsonl_detected_by_content(tmp_path):
    lines = [
        {"id": "test_0", "question": "Who?", "golden_answers": ["A", "B", "A"], "metadata": {"x": 1}},
        {"question": "What?", "golden_answers": ["C"]},
    ]
    records = read_raw("bamboogle", write(tmp_path / "bamboogle_test", jsonl(lines)))  # no extension
    assert records[0] == {"id": "test_0", "question": "Who?", "golden_answers": ["A", "B"], "metadata": {"x": 1}}
    assert records[1]["id"] == "2" and records[1]["metadata"] == {}


def test_real_flashrag_sample(shared_data):
    path = shared_data / "flashrag" / "nq_test_sample.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = read_raw("bamboogle", path)
    assert len(records) == len(raw) > 0
    for original, record in zip(raw, records, strict=True):
        assert record["id"] == original["id"] and record["question"] == original["question"]
        assert record["golden_answers"][0] == original["golden_answers"][0].strip()
        assert set(record["golden_answers"]) <= {a.strip() for a in original["golden_answers"]}


def test_malformed_jsonl_records_carry_file_line_and_field(tmp_path):
    no_question = {k: v for k, v in MUSIQUE.items() if k != "question"}
    bad_aliases = dict(MUSIQUE, id="2hop__3_4", answer_aliases="Lincoln")
    path = write(tmp_path / "m.jsonl", jsonl([MUSIQUE, no_question, "{not json", "", bad_aliases, [1, 2]]))
    items = list(iter_raw("musique", path))
    assert isinstance(items[0], dict)
    errors = items[1:]
    assert all(isinstance(e, MalformedRecord) for e in errors)
    assert [(e.line, e.field) for e in errors] == [
        (2, "question"),
        (3, "<line>"),
        (5, "answer_aliases"),
        (6, "<record>"),
    ]
    assert str(errors[0]) == f"{path}:2: question: missing"
    with pytest.raises(MalformedRecord, match=r"m\.jsonl:2: question: missing"):
        read_raw("musique", path)


def test_malformed_json_list_items_are_located_by_index(tmp_path):
    bad = dict(HOTPOT, supporting_facts=[["Ed Wood"]])
    path = write(tmp_path / "h.json", json.dumps([HOTPOT, {**HOTPOT, "answer": 3}, bad, dict(HOTPOT, _id=None)]))
    items = list(iter_raw("hotpotqa", path))
    assert items[1]["golden_answers"] == ["3"]  # a numeric answer is read as its digits
    assert [(e.line, e.field) for e in items[2:]] == [(2, "supporting_facts"), (3, "_id")]
    assert str(items[2]).startswith(f"{path}:[2]: supporting_facts:")


def test_unreadable_whole_files_raise(tmp_path):
    with pytest.raises(MalformedRecord, match="invalid JSON"):
        list(iter_raw("hotpotqa", write(tmp_path / "h.json", '[{"_id": 1},')))
    with pytest.raises(MalformedRecord, match="JSON list"):
        read_raw("2wikimultihopqa", write(tmp_path / "w.json", json.dumps(TWOWIKI)))
    with pytest.raises(MalformedRecord, match="Question,Answer"):
        read_raw("bamboogle", write(tmp_path / "b.csv", "Query,Response\nq,a\n"))
    items = list(iter_raw("bamboogle", write(tmp_path / "c.csv", "Question,Answer\nq,a,extra\nq2,\n")))
    assert [(e.line, e.field) for e in items] == [(2, "<row>"), (3, "answer")]


def test_unknown_benchmark_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="hotpotqa, 2wikimultihopqa, musique, bamboogle"):
        read_raw("triviaqa", tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_raw("musique", tmp_path / "nothing.jsonl")
    assert BENCHMARKS == ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


@given(st.text(min_size=1).filter(str.strip), st.lists(st.text()))
def test_golden_answers_answer_first_no_duplicates(answer, aliases):
    result = golden_answers(answer, aliases)
    assert result[0] == answer.strip()
    assert len(result) == len(set(result))
    assert all(a and a == a.strip() for a in result)
    assert set(result) == {a.strip() for a in [answer, *aliases] if a.strip()}
