"""The rule-based training reward of ReSearch (DESIGN section 3), reproduced with its quirks.

The reward decides what GRPO optimises, so it follows the original (verl's re_search.py) rule by
rule, including behaviour that looks accidental, e.g. the format check running before the EOS check
with the EOS still attached, the answer check looking at any "}" in the answer, and the "\\boxed "
(with a space) branch of the box extraction. Tests and a differential check against the original
pin this down; change it only on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from research_rl.evaluation.metrics import f1

WRONG_ANSWER_REWARD = 0.1
_ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# Where the original's compute_score cuts the decoded prompt + response to find the response.
INSTRUCT_MARKER = "<|im_start|>assistant\n"
BASE_MARKER = "Assistant:"


def original_response(solution: str) -> str | None:
    """The response as the original sees it in the decoded prompt + response: the text after the first
    "<|im_start|>assistant\\n" if there is one, else after the first "Assistant:", up to the next
    occurrence of that marker (a response that writes the marker again is cut there). None where the
    marker is missing (the original raises an IndexError there)."""
    marker = INSTRUCT_MARKER if INSTRUCT_MARKER in solution else BASE_MARKER
    parts = solution.split(marker)
    return parts[1] if len(parts) > 1 else None


def check_format(text: str) -> tuple[bool, str]:
    """The original's validate_format: (ok, reason) for the tag structure of a response."""
    if text.count("<think>") != text.count("</think>"):
        return False, "bad format: <think> and </think> counts differ"
    if text.count("<think>") == 0:
        return False, "bad format: no <think> block"
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False, "bad format: need exactly one <answer> and one </answer>"
    ok, reason = _check_search_result_order(text)
    if not ok:
        return False, reason
    answer_start = text.find("<answer>")
    answer_end = text.find("</answer>")
    if answer_start > answer_end:
        return False, "bad format: </answer> comes before <answer>"
    # Quirk kept: any "}" in the answer passes, it need not close the \boxed{.
    answer_content = text[answer_start:answer_end]
    if "\\boxed{" not in answer_content or "}" not in answer_content:
        return False, "bad format: answer has no \\boxed{...}"
    return True, "format is correct"


def _check_search_result_order(text: str) -> tuple[bool, str]:
    """Every <search> must be followed by </search>, <result>, </result>, in that order.

    Positions are found exactly as the original finds them (each tag searched from the <search>,
    </result> searched from <result>), so odd layouts are judged the same way.
    """
    position = 0
    while True:
        search_start = text.find("<search>", position)
        if search_start == -1:
            return True, ""
        result_start = text.find("<result>", search_start)
        search_end = text.find("</search>", search_start)
        # With result_start == -1 this searches from the last character, as the original does.
        result_end = text.find("</result>", result_start)
        if -1 in (result_start, search_end, result_end):
            return False, "bad format: a <search> lacks its </search>, <result> or </result>"
        if not search_start < search_end < result_start < result_end:
            return False, "bad format: search/result tags out of order"
        position = result_end


def last_boxed_only_string(text: str) -> str | None:
    """The last "\\boxed{...}" (brace-matched) in text, as the original's helper of that name.

    Quirks kept: if "\\boxed " (with a space) occurs anywhere, the result is "\\boxed " plus what
    follows its last occurrence up to the first "$"; with no "\\boxed" at all, "\\fbox" is tried;
    None when the braces never balance.
    """
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return None


def remove_boxed(boxed: str) -> str | None:
    """The content of a "\\boxed{...}" or "\\boxed ..." string; None where the original would raise."""
    space_prefix = "\\boxed "
    if space_prefix in boxed:
        return boxed[len(space_prefix) :] if boxed.startswith(space_prefix) else None
    brace_prefix = "\\boxed{"
    if not boxed.startswith(brace_prefix) or not boxed.endswith("}"):
        return None
    return boxed[len(brace_prefix) : -1]


def extract_answer_tag(text: str) -> str | None:
    """Content of the first <answer>...</answer> of the stripped text (DOTALL), or None."""
    match = _ANSWER_PATTERN.search(text.strip())
    return match.group(1) if match else None


def extract_boxed_answer(text: str) -> str | None:
    """The answer the reward would grade: last \\boxed{} content of the first answer tag, or None.

    No format or EOS checks; evaluation uses this to read a prediction out of a response.
    """
    answer_part = extract_answer_tag(text)
    if answer_part is None:
        return None
    boxed = last_boxed_only_string(answer_part)
    if boxed is None:
        return None
    return remove_boxed(boxed)


def score_with_reason(
    response: str, golden_answers: Sequence[str] | str, *, eos_token: str, prompt: str | None = None
) -> tuple[float, str]:
    """The reward and a human-readable reason for it.

    `response` is the generated text after the prompt (retriever text included, as decoded). The
    original's compute_score receives the whole sequence and splits it on "<|im_start|>assistant\\n"
    or "Assistant:" first (original_response); given the decoded `prompt`, so does this, quirk included;
    without it the response is graded whole.
    """
    if not eos_token:
        # The original would strip response[:-0], i.e. everything, and silently score 0.
        raise ValueError("eos_token must be a non-empty string")
    if prompt is not None:
        cut = original_response(prompt + response)
        if cut is None:
            return 0.0, "no assistant marker in the prompt and response"
        response = cut
    ok, reason = check_format(response)
    if not ok:
        return 0.0, reason
    if not response.endswith(eos_token):
        return 0.0, "over length: response does not end with the EOS token"
    response = response[: -len(eos_token)]
    answer_part = extract_answer_tag(response)
    if answer_part is None:
        return 0.0, "cannot extract the answer tag"
    boxed = last_boxed_only_string(answer_part)
    answer = remove_boxed(boxed) if boxed is not None else None
    if answer is None:
        return 0.0, "cannot extract a \\boxed{} answer"
    f1_score = f1(answer, golden_answers)
    if f1_score > 0:
        return f1_score, f"correct answer, f1 {f1_score:.4f}"
    return WRONG_ANSWER_REWARD, f"wrong answer but good format: {answer!r}"


def score(response: str, golden_answers: Sequence[str], *, eos_token: str, prompt: str | None = None) -> float:
    """The ReSearch training reward of one response (DESIGN section 3): 0, 0.1 or F1 in (0, 1]."""
    return score_with_reason(response, golden_answers, eos_token=eos_token, prompt=prompt)[0]
