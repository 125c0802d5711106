"""A forgiving parser for the ReSearch tags <think>, <search>, <result> and <answer>.

Model output is arbitrary text, so nothing here raises on it: unclosed, nested, repeated or empty
tags are reported in `problems` instead. The parser is for inspection and evaluation; the training
reward keeps the original's own string rules (research_rl.reward).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from research_rl.reward import last_boxed_only_string, remove_boxed

TAG_NAMES = ("think", "search", "result", "answer")
_TAG_TOKEN = re.compile(r"<(/?)(think|search|result|answer)>")


@dataclass
class ParsedResponse:
    """What a response contains, in order of appearance, and what looked wrong."""

    thinks: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    answer: str | None = None
    boxed: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class _OpenTag:
    name: str
    content_start: int


def parse_response(text: str) -> ParsedResponse:
    """Parse tags out of a response; never raises.

    Rules: an opening tag starts a block that the next matching closing tag ends; closing an outer
    tag also ends (and reports) inner blocks left open. Inside <result> (retrieved passages, not
    model text) only </result> is recognised. Search queries are stripped; other contents are kept
    verbatim. `answer` is the first closed answer block and `boxed` its last \\boxed{} content.
    """
    parsed = ParsedResponse()
    stack: list[_OpenTag] = []
    first_answer_end: int | None = None
    for match in _TAG_TOKEN.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        if stack and stack[-1].name == "result" and (name != "result" or not closing):
            continue
        if not closing:
            _open(stack, name, match.end(), parsed.problems)
            continue
        content = _close(stack, name, text, match.start(), parsed.problems)
        if content is None:
            continue
        _record(parsed, name, content)
        if name == "answer" and first_answer_end is None:
            first_answer_end = match.end()
    for open_tag in stack:
        parsed.problems.append(f"unclosed <{open_tag.name}>")
    _check_answer(parsed, text, first_answer_end)
    return parsed


def _open(stack: list[_OpenTag], name: str, content_start: int, problems: list[str]) -> None:
    """Push a block; a repeated opening of a block already open is reported and ignored."""
    open_names = [open_tag.name for open_tag in stack]
    if name in open_names:
        problems.append(f"nested <{name}>")
        return
    if stack:
        problems.append(f"<{name}> nested inside <{stack[-1].name}>")
    stack.append(_OpenTag(name, content_start))


def _close(stack: list[_OpenTag], name: str, text: str, end: int, problems: list[str]) -> str | None:
    """Pop the block `name` (and any left open inside it); its content, or None if none was open."""
    open_names = [open_tag.name for open_tag in stack]
    if name not in open_names:
        problems.append(f"unmatched </{name}>")
        return None
    while stack[-1].name != name:
        problems.append(f"unclosed <{stack.pop().name}>")
    return text[stack.pop().content_start : end]


def _record(parsed: ParsedResponse, name: str, content: str) -> None:
    """Store one closed block's content in its list."""
    if not content.strip():
        parsed.problems.append(f"empty <{name}>")
    if name == "think":
        parsed.thinks.append(content)
    elif name == "search":
        parsed.searches.append(content.strip())
    elif name == "result":
        parsed.results.append(content)
    elif parsed.answer is None:
        parsed.answer = content
        boxed = last_boxed_only_string(content)
        parsed.boxed = remove_boxed(boxed) if boxed is not None else None
    else:
        parsed.problems.append("more than one <answer>")


def _check_answer(parsed: ParsedResponse, text: str, first_answer_end: int | None) -> None:
    """Report answer anomalies: no answer, no box in it, or text after it."""
    if first_answer_end is None:
        parsed.problems.append("no closed <answer>")
        return
    if parsed.boxed is None:
        parsed.problems.append("no \\boxed{} in <answer>")
    if text[first_answer_end:].strip():
        parsed.problems.append("text after </answer>")


def last_search_query(text: str) -> str:
    """The rollout's query: text between the last </search> and the last <search> before it, stripped.

    Same as the original's extract_search_content; "" when either tag is missing.
    """
    end = text.rfind("</search>")
    if end == -1:
        return ""
    start = text.rfind("<search>", 0, end)
    if start == -1:
        return ""
    return text[start + len("<search>") : end].strip()
