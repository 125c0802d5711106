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

JUDGE_PROMPT = """You are grading an answer to a question. You get the question, a list of reference \
answers (any one of them is correct), and a predicted answer.

Decide whether the predicted answer means the same as at least one reference answer for this question. \
Wording, capitalisation and formatting may differ; the meaning may not. An answer that is vaguer, \
partly wrong, or that hedges between several options is not correct.

Question: {question}
Reference answers: {golds}
Predicted answer: {prediction}

Briefly explain your reasoning, then end with a last line that is exactly "Verdict: yes" if the \
predicted answer is correct, or "Verdict: no" if it is not."""

_VERDICT = re.compile(r"\b(yes|no|correct|incorrect)\b", re.IGNORECASE)


def judge_prompt(question: str, golden_answers: Sequence[str], prediction: str) -> str:
    return JUDGE_PROMPT.format(question=question, golds=json.dumps(list(golden_answers)), prediction=prediction)


def parse_verdict(text: str) -> float | None:
    """1.0 for a yes/correct verdict, 0.0 for no/incorrect, None when the reply gives neither.

    The last verdict word wins: the reasoning before it may quote both.
    """
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
            "max_tokens": 512,
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

    The API key comes from the environment (RESEARCH_RL_JUDGE_API_KEY, else OPENAI_API_KEY), never
    from the config, so configs can be committed.
    """
    judge_cfg = cfg["evaluation"].get("judge", {})
    if not judge_cfg.get("enabled"):
        return None
    if not judge_cfg.get("url") or not judge_cfg.get("model"):
        raise ValueError("evaluation.judge.enabled needs evaluation.judge.url and evaluation.judge.model")
    api_key = os.environ.get("RESEARCH_RL_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return LLMJudge(judge_cfg["url"], judge_cfg["model"], api_key=api_key)
