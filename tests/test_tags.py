"""The tag parser: contents found, anomalies reported, never an exception; the rollout's query rule."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research_rl.tags import ParsedResponse, last_search_query, parse_response

WELL_FORMED = (
    "<think> need the capital </think> <search> capital of France </search> <result>\nParis is it.\n"
    "</result> <think> found </think> <answer> The answer is \\[ \\boxed{Paris} \\] </answer>"
)


def test_well_formed_response() -> None:
    parsed = parse_response(WELL_FORMED)
    assert parsed.thinks == [" need the capital ", " found "]
    assert parsed.searches == ["capital of France"]
    assert parsed.results == ["\nParis is it.\n"]
    assert parsed.answer == " The answer is \\[ \\boxed{Paris} \\] "
    assert parsed.boxed == "Paris"
    assert parsed.problems == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<think> a <answer>\\boxed{x}</answer>", "unclosed <think>"),
        ("<think> a <think> b </think> <answer>\\boxed{x}</answer>", "nested <think>"),
        ("<think> a <search> q </search> </think> <answer>\\boxed{x}</answer>", "<search> nested inside <think>"),
        ("</search> <answer>\\boxed{x}</answer>", "unmatched </search>"),
        ("<search> q <answer>\\boxed{x}</answer>", "unclosed <search>"),
        ("<search>  </search> <answer>\\boxed{x}</answer>", "empty <search>"),
        ("<answer>\\boxed{x}</answer> trailing", "text after </answer>"),
        ("<answer>\\boxed{x}</answer><answer>\\boxed{y}</answer>", "more than one <answer>"),
        ("<think> no answer </think>", "no closed <answer>"),
        ("<answer> Paris </answer>", "no \\boxed{} in <answer>"),
    ],
)
def test_problems_reported(text: str, problem: str) -> None:
    assert problem in parse_response(text).problems


def test_first_answer_wins() -> None:
    parsed = parse_response("<answer>\\boxed{A}</answer><answer>\\boxed{B}</answer>")
    assert parsed.answer == "\\boxed{A}"
    assert parsed.boxed == "A"


def test_result_content_is_opaque() -> None:
    # Retrieved passages may contain tag-like text; only </result> ends the block.
    parsed = parse_response("<result> a <answer> b </think> </result> <answer>\\boxed{x}</answer>")
    assert parsed.results == [" a <answer> b </think> "]
    assert parsed.answer == "\\boxed{x}"
    assert parsed.problems == []


def test_closing_outer_closes_inner() -> None:
    parsed = parse_response("<think> a <search> q </think> <answer>\\boxed{x}</answer>")
    assert parsed.searches == []
    assert parsed.thinks == [" a <search> q "]
    assert "unclosed <search>" in parsed.problems


def test_empty_text() -> None:
    parsed = parse_response("")
    assert parsed == ParsedResponse(problems=["no closed <answer>"])


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("<search> a </search> <result> r </result> <search> b </search>", "b"),
        ("<think> x </think> <search>\n who is X? \n</search>", "who is X?"),
        ("<search> a </search> tail <search> unfinished", "a"),  # the last </search> decides
        ("<search> a <search> b </search>", "b"),  # the last <search> before it
        ("no tags at all", ""),
        ("</search> <search> late", ""),  # no <search> before the last </search>
        ("<search></search>", ""),
        ("<search>x</search", ""),
    ],
)
def test_last_search_query(text: str, query: str) -> None:
    assert last_search_query(text) == query


TAG_TOKENS = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<result>",
    "</result>",
    "<answer>",
    "</answer>",
    "\\boxed{",
    "\\boxed ",
    "}",
    "{",
    "$",
    "<",
    ">",
    "/",
]
TEXT_PIECES = st.text(max_size=8)
TAGGED_TEXT = st.lists(st.one_of(st.sampled_from(TAG_TOKENS), TEXT_PIECES), max_size=40).map("".join)


def _check_invariants(text: str) -> None:
    parsed = parse_response(text)
    assert len(parsed.searches) <= min(text.count("<search>"), text.count("</search>"))
    assert len(parsed.thinks) <= min(text.count("<think>"), text.count("</think>"))
    assert len(parsed.results) <= min(text.count("<result>"), text.count("</result>"))
    assert all(query == query.strip() for query in parsed.searches)
    if parsed.answer is None:
        assert parsed.boxed is None
        assert "no closed <answer>" in parsed.problems
    else:
        assert "<answer>" + parsed.answer + "</answer>" in text
    if parsed.boxed is not None:
        assert parsed.answer is not None and parsed.boxed in parsed.answer
    query = last_search_query(text)
    assert query == query.strip()
    if query:
        assert query in text


@settings(max_examples=400)
@given(st.text(max_size=200))
def test_parser_never_raises_on_random_text(text: str) -> None:
    _check_invariants(text)


@settings(max_examples=600)
@given(TAGGED_TEXT)
def test_parser_never_raises_on_tag_soup(text: str) -> None:
    _check_invariants(text)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["think", "search", "result"]), max_size=6), TEXT_PIECES)
def test_well_nested_sequences_parse_cleanly(names: list[str], filler: str) -> None:
    # A flat sequence of closed blocks with tag-free contents is parsed without problems.
    filler = filler.replace("<", "(")
    blocks = [f"<{name}> {filler}x </{name}>" for name in names]
    text = " ".join(blocks) + " <answer> \\boxed{y} </answer>"
    parsed = parse_response(text)
    assert parsed.problems == []
    assert len(parsed.thinks) == names.count("think")
    assert len(parsed.searches) == names.count("search")
    assert len(parsed.results) == names.count("result")
    assert parsed.boxed == "y"
