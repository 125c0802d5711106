"""The training reward: format rules, EOS rule, box extraction and F1 grading, quirks included."""

import pytest

from research_rl.reward import (
    check_format,
    extract_boxed_answer,
    last_boxed_only_string,
    remove_boxed,
    score,
    score_with_reason,
)

EOS = "<|im_end|>"
WRONG = 0.1  # the original's reward for a well-formed response with F1 = 0
SEARCH = "<search> capital of France </search> <result>\nParis is the capital.\n</result> "


def response(answer_body: str, *, middle: str = SEARCH, eos: str = EOS) -> str:
    """A response in the template's shape: think, optional search/result, think, answer, EOS."""
    return f"<think> plan </think> {middle}<think> so </think> <answer> {answer_body} </answer>{eos}"


def boxed(answer: str) -> str:
    return f"The final answer is \\[ \\boxed{{{answer}}} \\]"


CASES = [
    # (name, response, golds, expected reward)
    ("correct", response(boxed("Paris")), ["Paris"], 1.0),
    ("correct, no search", response(boxed("Paris"), middle=""), ["Paris"], 1.0),
    ("normalised match", response(boxed("the paris.")), ["Paris"], 1.0),
    ("partial", response(boxed("Paris France")), ["Paris"], pytest.approx(2 / 3)),
    ("wrong answer", response(boxed("London")), ["Paris"], WRONG),
    ("empty box", response(boxed("")), ["Paris"], WRONG),
    ("multiple golds", response(boxed("City of Light")), ["Paris", "city of light"], 1.0),
    ("yes gold, yes answer", response(boxed("Yes")), ["yes"], 1.0),
    ("yes gold, overlapping answer", response(boxed("yes indeed")), ["yes"], WRONG),
    ("no answer vs yes gold", response(boxed("no")), ["yes"], WRONG),
    # LaTeX wrappers are not stripped: "\text{Paris}" normalises to "textparis".
    ("nested braces", response(boxed("\\text{Paris}")), ["Paris"], WRONG),
    ("nested braces, glued gold", response(boxed("\\text{Paris}")), ["textParis"], 1.0),
    ("nested braces only inner", response("\\boxed{{Paris}}"), ["Paris"], 1.0),
    ("last box graded", response("\\boxed{London} or \\boxed{Paris}"), ["Paris"], 1.0),
    # The format check needs "\boxed{"; then any "\boxed " (with a space) switches extraction to the space branch.
    ("boxed with space", response("\\boxed{x} $\\boxed Paris$ done"), ["Paris"], 1.0),
    ("boxed with space only", response("$\\boxed Paris$ done }"), ["Paris"], 0.0),
    # With "\boxed " anywhere, the space branch wins even over a later \boxed{...}.
    ("space branch wins", response("\\boxed London and \\boxed{Paris}"), ["Paris"], WRONG),
    ("space branch graded", response("\\boxed London and \\boxed{Paris}"), ["London"], pytest.approx(0.5)),
    ("unbalanced box", response("\\boxed{Paris"), ["Paris"], 0.0),
    ("last box unbalanced", response("\\boxed{Paris} }\\boxed{"), ["Paris"], 0.0),
    ("last box misspelt", response("\\boxed{x} \\boxedx{Paris}"), ["Paris"], 0.0),
    ("no answer tag", f"<think> Paris </think> \\boxed{{Paris}}{EOS}", ["Paris"], 0.0),
    ("answer outside tags", response("no box here") + " \\boxed{Paris}", ["Paris"], 0.0),
    (
        "two answer tags",
        response(boxed("Paris")).replace(EOS, f"<answer> \\boxed{{Paris}} </answer>{EOS}"),
        ["Paris"],
        0.0,
    ),
    ("answer tags reversed", f"<think> a </think> </answer> \\boxed{{Paris}} <answer>{EOS}", ["Paris"], 0.0),
    ("no think", f"<answer> {boxed('Paris')} </answer>{EOS}", ["Paris"], 0.0),
    ("unpaired think", response(boxed("Paris")).replace("</think> ", "", 1), ["Paris"], 0.0),
    ("missing result", response(boxed("Paris"), middle="<search> q </search> "), ["Paris"], 0.0),
    ("missing </search>", response(boxed("Paris"), middle="<search> q <result> r </result> "), ["Paris"], 0.0),
    (
        "result before search end",
        response(boxed("Paris"), middle="<search> q <result> r </search> </result> "),
        ["Paris"],
        0.0,
    ),
    ("missing </result>", response(boxed("Paris"), middle="<search> q </search> <result> r "), ["Paris"], 0.0),
    ("two searches", response(boxed("Paris"), middle=SEARCH + SEARCH), ["Paris"], 1.0),
    ("missing EOS (over length)", response(boxed("Paris"), eos=""), ["Paris"], 0.0),
    ("other EOS", response(boxed("Paris"), eos="</s>"), ["Paris"], 0.0),
    ("text between answer and EOS", response(boxed("Paris")).replace(EOS, f" bye{EOS}"), ["Paris"], 1.0),
]


@pytest.mark.parametrize(("name", "text", "golds", "expected"), CASES, ids=[case[0] for case in CASES])
def test_score_table(name: str, text: str, golds: list[str], expected: float) -> None:
    assert score(text, golds, eos_token=EOS) == expected


def test_format_checked_before_eos_with_eos_attached() -> None:
    # An EOS string that itself contains a tag changes the format verdict: the original counts it.
    text = response(boxed("Paris"), eos="</think>")
    assert score(text, ["Paris"], eos_token="</think>") == 0.0
    assert score_with_reason(text, ["Paris"], eos_token="</think>")[1].startswith("bad format")


def test_any_closing_brace_satisfies_format_check() -> None:
    # The format check wants "\boxed{" and some "}" anywhere in the answer; extraction then fails.
    text = response("} \\boxed{Paris")
    assert check_format(text)[0]
    assert score_with_reason(text, ["Paris"], eos_token=EOS) == (0.0, "cannot extract a \\boxed{} answer")


def test_only_one_eos_is_stripped() -> None:
    text = response(boxed("Paris"), eos=EOS + EOS)
    assert score(text, ["Paris"], eos_token=EOS) == 1.0


def test_reasons_distinguish_outcomes() -> None:
    assert score_with_reason(response(boxed("Paris"), eos=""), ["Paris"], eos_token=EOS)[1].startswith("over")
    assert score_with_reason(response(boxed("Rome")), ["Paris"], eos_token=EOS)[1].startswith("wrong answer")
    assert score_with_reason(response(boxed("Paris")), ["Paris"], eos_token=EOS)[1].startswith("correct")


def test_empty_eos_token_is_refused() -> None:
    with pytest.raises(ValueError):
        score(response(boxed("Paris"), eos=""), ["Paris"], eos_token="")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x \\boxed{a} y \\boxed{b{c}} z", "\\boxed{b{c}}"),
        ("\\boxed a $ b", "\\boxed a "),
        ("\\fbox{a}", "\\fbox{a}"),
        ("\\boxed{a", None),
        ("no box", None),
    ],
)
def test_last_boxed_only_string(text: str, expected: str | None) -> None:
    assert last_boxed_only_string(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("\\boxed{a}", "a"), ("\\boxed a", "a"), ("\\fbox{a}", None), ("x\\boxed a", None), ("\\boxed{a", None)],
)
def test_remove_boxed(text: str, expected: str | None) -> None:
    assert remove_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (response(boxed("Paris")), "Paris"),
        ("<answer>\\boxed{A}</answer><answer>\\boxed{B}</answer>", "A"),  # first answer tag
        ("<answer>\n\\boxed{multi\nline}\n</answer>", "multi\nline"),
        ("\\boxed{Paris}", None),
        ("<answer>Paris</answer>", None),
        ("<answer>\\boxed{Paris}", None),
    ],
)
def test_extract_boxed_answer(text: str, expected: str | None) -> None:
    assert extract_boxed_answer(text) == expected


# --------------------------------------------------------------------- the original's prompt split

BASE_PROMPT = "A conversation ... User: Where is Paris?. Assistant:"
CHAT_PROMPT = "<|im_start|>system\nYou are ...<|im_end|>\n<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("prompt", [BASE_PROMPT, CHAT_PROMPT])
def test_with_the_prompt_a_plain_response_scores_as_without(prompt):
    text = response(boxed("Paris"))
    assert score(text, ["Paris"], eos_token=EOS, prompt=prompt) == score(text, ["Paris"], eos_token=EOS) == 1.0


def test_base_response_that_writes_assistant_again_is_cut_there():
    """The original splits prompt + response on "Assistant:" and grades piece 1 only: what follows a
    second "Assistant:" is lost, and the cut piece no longer ends with EOS."""
    text = response(boxed("Paris")).replace(EOS, f" User: more? Assistant: sure{EOS}")
    assert score(text, ["Paris"], eos_token=EOS) == 1.0
    reward, reason = score_with_reason(text, ["Paris"], eos_token=EOS, prompt=BASE_PROMPT)
    assert reward == 0.0 and reason.startswith("over length")


def test_instruct_split_ignores_assistant_colon_but_not_the_chat_marker():
    text = response(boxed("Paris")).replace("<think> so", "<think> Assistant: so")
    assert score(text, ["Paris"], eos_token=EOS, prompt=CHAT_PROMPT) == 1.0
    assert score(text, ["Paris"], eos_token=EOS, prompt=BASE_PROMPT) == 0.0
    again = response(boxed("Paris")).replace("<think> so", "<|im_start|>assistant\n<think> so")
    assert score(again, ["Paris"], eos_token=EOS, prompt=CHAT_PROMPT) == 0.0


def test_a_prompt_without_any_marker_scores_zero():
    assert score(response(boxed("Paris")), ["Paris"], eos_token=EOS, prompt="Question: where?") == 0.0
