"""Answer metrics: normalisation, EM, cover-EM, F1 with HotpotQA's special answers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from research_rl.evaluation.metrics import (
    compute_all,
    cover_exact_match,
    exact_match,
    f1,
    f1_precision_recall,
    normalize_answer,
    precision,
    recall,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple,  a day ", "apple day"),
        ("the-end", "theend"),  # punctuation goes first, so the article is glued and kept
        ("Theory", "theory"),  # "the" only as a whole word
        ("Café Über", "café über"),  # non-ASCII letters stay, lower-cased
        ("¿Qué?", "¿qué"),  # only ASCII punctuation is dropped
        ("a", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", ["paris"], 1.0),
        ("The Paris.", ["London", "Paris"], 1.0),
        ("Paris, France", ["Paris"], 0.0),
        ("Paris", "Paris", 1.0),  # a bare string is one gold, not characters
        ("P", "Paris", 0.0),
        ("Paris", [], 0.0),
    ],
)
def test_exact_match(prediction: str, golds: list[str] | str, expected: float) -> None:
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("It is Paris, France", ["paris"], 1.0),
        ("Paris", ["Paris, France"], 0.0),
        ("Lyon", ["Paris", "Lyon"], 1.0),
        ("anything", ["The"], 1.0),  # a gold normalising to "" is in every prediction (FlashRAG)
        ("a", "ab", 0.0),
    ],
)
def test_cover_exact_match(prediction: str, golds: list[str] | str, expected: float) -> None:
    assert cover_exact_match(prediction, golds) == expected


def test_f1_partial_overlap() -> None:
    # prediction tokens: new york city (3); gold: new york (2); overlap 2
    f1_value, precision_value, recall_value = f1_precision_recall("New York City", ["new york"])
    assert precision_value == pytest.approx(2 / 3)
    assert recall_value == pytest.approx(1.0)
    assert f1_value == pytest.approx(0.8)


def test_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # common multiset of (paris paris) and (paris) is one token
    assert precision("paris paris", ["paris"]) == pytest.approx(0.5)
    assert recall("paris paris", ["paris"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("yes", ["yes"], 1.0),
        ("Yes.", ["yes"], 1.0),
        ("yes", ["no"], 0.0),
        ("yes", ["yes it is"], 0.0),  # special prediction, different gold: 0 despite overlap
        ("yes it is", ["yes"], 0.0),  # special gold, different prediction: 0 despite overlap
        ("no", ["noanswer"], 0.0),
        ("yes", ["no", "yes"], 1.0),
    ],
)
def test_f1_special_answers(prediction: str, golds: list[str], expected: float) -> None:
    assert f1(prediction, golds) == expected


def test_f1_best_over_golds_and_maxima_independent() -> None:
    # gold 1 gives precision 1 (recall 1/3); gold 2 gives recall 1 (precision 1/2)
    golds = ["alpha beta gamma", "alpha"]
    f1_value, precision_value, recall_value = f1_precision_recall("alpha beta", golds)
    assert precision_value == pytest.approx(1.0)
    assert recall_value == pytest.approx(1.0)
    assert f1_value == pytest.approx(max(2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 1 / 1.5))


def test_f1_no_overlap_and_empty() -> None:
    assert f1("London", ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0
    assert f1("the", ["a"]) == 0.0  # both normalise to nothing


def test_compute_all_keys_and_values() -> None:
    result = compute_all("the Paris", ["Paris", "Lyon"])
    assert result == {"em": 1.0, "f1": 1.0, "cover_em": 1.0, "precision": 1.0, "recall": 1.0}
    assert compute_all("Rome", ["Paris"]) == {
        "em": 0.0,
        "f1": 0.0,
        "cover_em": 0.0,
        "precision": 0.0,
        "recall": 0.0,
    }


@given(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=4))
def test_metric_invariants(prediction: str, golds: list[str]) -> None:
    result = compute_all(prediction, golds)
    for value in result.values():
        assert 0.0 <= value <= 1.0
    # an exact match is always covered, and normalisation is idempotent
    assert result["em"] <= result["cover_em"]
    assert normalize_answer(normalize_answer(prediction)) == normalize_answer(prediction)
    assert result["f1"] <= max(result["precision"], result["recall"]) + 1e-12
