"""Answer metrics: EM, F1 (with precision and recall) and cover-EM against a list of gold answers.

The normalisation and the F1 rule are those of the SQuAD / HotpotQA evaluation scripts as the
original ReSearch reward and FlashRAG evaluator implement them, so that our numbers are comparable
with the paper's. Every metric takes one prediction and its gold answers (a bare string counts as a
one-element list) and returns the best score over the golds.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# HotpotQA scores these special answers only when prediction and gold normalise equal.
_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop a/an/the, collapse whitespace (in that order).

    The order matters: punctuation is removed before articles, so "the-end" becomes "theend" and
    keeps its letters, exactly as in the official scripts.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(golden_answers: Sequence[str] | str) -> list[str]:
    """A bare string is one gold answer, not a sequence of one-character golds."""
    if isinstance(golden_answers, str):
        return [golden_answers]
    return list(golden_answers)


def exact_match(prediction: str, golden_answers: Sequence[str] | str) -> float:
    """1.0 when the normalised prediction equals some normalised gold, else 0.0."""
    normalized_prediction = normalize_answer(prediction)
    for gold in _as_list(golden_answers):
        if normalize_answer(gold) == normalized_prediction:
            return 1.0
    return 0.0


def cover_exact_match(prediction: str, golden_answers: Sequence[str] | str) -> float:
    """1.0 when some normalised gold is a substring of the normalised prediction (FlashRAG's sub-EM).

    As in FlashRAG this is plain substring containment, so a gold that normalises to "" (e.g. "the")
    is contained in every prediction.
    """
    normalized_prediction = normalize_answer(prediction)
    for gold in _as_list(golden_answers):
        if normalize_answer(gold) in normalized_prediction:
            return 1.0
    return 0.0


def _token_scores(normalized_prediction: str, normalized_gold: str) -> tuple[float, float, float]:
    """(f1, precision, recall) of one normalised prediction against one normalised gold."""
    if normalized_prediction != normalized_gold and (
        normalized_prediction in _SPECIAL_ANSWERS or normalized_gold in _SPECIAL_ANSWERS
    ):
        return 0.0, 0.0, 0.0
    prediction_tokens = normalized_prediction.split()
    gold_tokens = normalized_gold.split()
    num_same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0, 0.0, 0.0
    precision_value = num_same / len(prediction_tokens)
    recall_value = num_same / len(gold_tokens)
    f1_value = 2 * precision_value * recall_value / (precision_value + recall_value)
    return f1_value, precision_value, recall_value


def f1_precision_recall(prediction: str, golden_answers: Sequence[str] | str) -> tuple[float, float, float]:
    """(f1, precision, recall), each maximised over the golds independently.

    The three maxima may come from different golds; that is how the original's get_f1_score and
    FlashRAG's token_level_scores report them, so we keep it.
    """
    normalized_prediction = normalize_answer(prediction)
    best_f1 = best_precision = best_recall = 0.0
    for gold in _as_list(golden_answers):
        f1_value, precision_value, recall_value = _token_scores(normalized_prediction, normalize_answer(gold))
        best_f1 = max(best_f1, f1_value)
        best_precision = max(best_precision, precision_value)
        best_recall = max(best_recall, recall_value)
    return best_f1, best_precision, best_recall


def f1(prediction: str, golden_answers: Sequence[str] | str) -> float:
    """Token-level F1 with HotpotQA's yes/no/noanswer rule, best over golds."""
    return f1_precision_recall(prediction, golden_answers)[0]


def precision(prediction: str, golden_answers: Sequence[str] | str) -> float:
    """Token-level precision, best over golds."""
    return f1_precision_recall(prediction, golden_answers)[1]


def recall(prediction: str, golden_answers: Sequence[str] | str) -> float:
    """Token-level recall, best over golds."""
    return f1_precision_recall(prediction, golden_answers)[2]


def compute_all(prediction: str, golden_answers: Sequence[str] | str) -> dict[str, float]:
    """Every per-question metric at once: em, f1, cover_em, precision, recall."""
    f1_value, precision_value, recall_value = f1_precision_recall(prediction, golden_answers)
    return {
        "em": exact_match(prediction, golden_answers),
        "f1": f1_value,
        "cover_em": cover_exact_match(prediction, golden_answers),
        "precision": precision_value,
        "recall": recall_value,
    }
