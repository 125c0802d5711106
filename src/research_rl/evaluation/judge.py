"""LLM-as-judge: ask a chat model whether a prediction answers the question, given the gold answers.

The paper reports this next to EM because a correct answer phrased differently from every gold scores
0 on EM. Any OpenAI-compatible chat endpoint works (a hosted API, or vLLM/SGLang serving a judge).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

# The judge prompt of the paper (arXiv 2503.19470, Appendix A), word for word as Agent-RL/ReSearch sends it
# (scripts/evaluation/llm_judge.py): its LJ numbers were measured with exactly this text, so a reworded
# prompt would measure something else. Doubled braces are literal ones for str.format; \x20 is the original's
# trailing space after ```json.
JUDGE_PROMPT = """You will be given a question and its ground truth answer list where each item can be a ground truth \
answer. Provided a pred_answer, you need to judge if the pred_answer correctly answers the question based on the \
ground truth answer list. You should first give your rationale for the judgement, and then give your judgement result \
(i.e., correct or incorrect).

Here is the criteria for the judgement:
1. The pred_answer doesn't need to be exactly the same as any of the ground truth answers, but should be \
semantically same for the question.
2. Each item in the ground truth answer list can be viewed as a ground truth answer for the question, and the \
pred_answer should be semantically same to at least one of them.

question: {question}
ground truth answers: {gt_answer}
pred_answer: {pred_answer}

The output should in the following json format:
```json\x20
{{
    "rationale": "your rationale for the judgement, as a text",
    "judgement": "your judgement result, can only be 'correct' or 'incorrect'"
}}
```

Your output:"""
# The original's request settings: greedy, a JSON object reply, up to 1024 tokens.
JUDGE_MAX_TOKENS = 1024

_VERDICT = re.compile(r"\b(yes|no|correct|incorrect)\b", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def judge_prompt(question: str, golden_answers: Sequence[str], prediction: str) -> str:
    """The paper's prompt; the gold list is written as the original writes it, str() of a Python list."""
    return JUDGE_PROMPT.format(question=question, gt_answer=str(list(golden_answers)), pred_answer=prediction)


def parse_verdict(text: str) -> float | None:
    """1.0 for a correct verdict, 0.0 for an incorrect one, None when the reply gives none.

    The paper's judge answers a JSON object whose `judgement` is 'correct' or 'incorrect' (the original
    counts exactly 'correct' as right); a reply that is not such an object falls back to the last
    yes/no/correct/incorrect word after a "verdict" marker, or in the whole text.
    """
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            reply = json.loads(match.group(0))
        except json.JSONDecodeError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("judgement"), str):
            return 1.0 if reply["judgement"].strip().lower() == "correct" else 0.0
    marker = text.lower().rfind("verdict")
    tail = text[marker:] if marker >= 0 else text
    words = _VERDICT.findall(tail)
    if not words:
        return None
    return 1.0 if words[-1].lower() in ("yes", "correct") else 0.0


class LLMJudge:
    """Scores predictions through `POST {base_url}/chat/completions` (base_url ends with /v1)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        max_concurrency: int = 16,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def judge(self, question: str, golden_answers: Sequence[str], prediction: str) -> float:
        """1.0 if the judge calls the prediction correct, else 0.0."""
        if not prediction.strip():
            return 0.0  # nothing to judge: an empty answer answers nothing
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": judge_prompt(question, golden_answers, prediction)}],
            "temperature": 0,
            "max_tokens": JUDGE_MAX_TOKENS,
            "response_format": {"type": "json_object"},
        }
        last_problem = ""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(self.url, json=body)
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    verdict = parse_verdict(response.json()["choices"][0]["message"]["content"] or "")
                    if verdict is not None:
                        return verdict
                    last_problem = "reply without a verdict"
                else:
                    last_problem = f"status {response.status_code}"
            except httpx.TransportError as error:
                last_problem = str(error)
            if attempt < self.retries:
                time.sleep(self.backoff_seconds * 2**attempt)
        raise RuntimeError(f"judge at {self.url} gave no verdict after {self.retries + 1} tries: {last_problem}")

    def judge_batch(self, items: Sequence[dict[str, Any]]) -> list[float]:
        """Judge predictions records ({question, golden_answers, prediction}) concurrently, in order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(lambda it: self.judge(it["question"], it["golden_answers"], it["prediction"]), items))

    def close(self) -> None:
        self._client.close()


def judge_from_config(cfg: dict[str, Any]) -> LLMJudge | None:
    """The judge that cfg["evaluation"]["judge"] asks for, or None when it is disabled.

    The API key comes from the environment, never from the config, so configs can be committed: the
    variable evaluation.judge.api_key_env names when set (which must then exist), else
    RESEARCH_RL_JUDGE_API_KEY, else OPENAI_API_KEY.
    """
    judge_cfg = cfg["evaluation"].get("judge", {})
    if not judge_cfg.get("enabled"):
        return None
    if not judge_cfg.get("url") or not judge_cfg.get("model"):
        raise ValueError("evaluation.judge.enabled needs evaluation.judge.url and evaluation.judge.model")
    key_env = judge_cfg.get("api_key_env")
    if key_env:
        api_key = os.environ.get(key_env)
        if not api_key:
            raise ValueError(f"evaluation.judge.api_key_env: the environment variable {key_env} is not set")
    else:
        api_key = os.environ.get("RESEARCH_RL_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return LLMJudge(judge_cfg["url"], judge_cfg["model"], api_key=api_key)
