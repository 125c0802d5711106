"""The Generator protocol over an OpenAI-compatible `/v1/completions` server (vLLM, SGLang).

The multi-turn search rollout needs each turn cut right after `</search>` with the stop string kept,
and needs to know whether a turn ended on a stop string, on EOS, or on the token budget. The OpenAI
API says only "stop" or "length", so this client reads the engines' extensions: vLLM's `stop_reason`
(the matched string, a token id, or null for EOS) and SGLang's `matched_stop`. It then normalises the
text the same way the in-process backend produces it: stop string kept, EOS token appended.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from research_rl.generation import FinishReason, Generation, TokenizerText, per_prompt_budgets

# Status codes worth another try: the server is starting, overloaded, or briefly failing.
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Requests in flight per generate call: vLLM's default max_num_seqs, so the engine's batch stays full
# (serving.max_concurrency overrides it). The caller's batch bounds it too: evaluation.batch_size prompts.
DEFAULT_MAX_CONCURRENCY = 256


class OpenAICompletionsGenerator(TokenizerText):
    """Continues token-id prompts through `POST {base_url}/completions`, one request per prompt.

    Requests for one batch go out concurrently; the engine batches them itself (continuous batching).
    base_url is the API root, e.g. `http://127.0.0.1:8000/v1`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        api_key: str | None = None,
        timeout: float = 600.0,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        send_token_ids: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token: str = tokenizer.eos_token
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_concurrency = max_concurrency
        self.send_token_ids = send_token_ids
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int] | int,
        stop: Sequence[str] = (),
        temperature: float = 1.0,
    ) -> list[Generation]:
        budgets = per_prompt_budgets(max_new_tokens, len(prompts))
        jobs = list(zip(prompts, budgets, strict=True))
        if len(jobs) <= 1:
            return [self._complete_one(p, b, stop, temperature) for p, b in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._complete_one(job[0], job[1], stop, temperature), jobs))

    def _request_body(
        self, prompt: Sequence[int], max_tokens: int, stop: Sequence[str], temperature: float
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": list(prompt) if self.send_token_ids else self.decode(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stop": list(stop) or None,
            "n": 1,
            # vLLM extensions (ignored elsewhere): keep the stop string, keep special tokens in the text.
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            # SGLang's name for keeping the stop string.
            "no_stop_trim": True,
        }

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on connection errors and retryable statuses; other 4xx fail at once."""
        url = f"{self.base_url}/completions"
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(url, json=body)
                if response.status_code not in RETRYABLE_STATUS:
                    response.raise_for_status()
                    return response.json()
                last_error = httpx.HTTPStatusError(
                    f"{response.status_code} from {url}: {response.text[:500]}",
                    request=response.request,
                    response=response,
                )
            except httpx.TransportError as error:
                last_error = error
            if attempt < self.retries:
                time.sleep(self.backoff_seconds * 2**attempt)
        raise RuntimeError(f"completion request failed after {self.retries + 1} tries: {last_error}")

    def _complete_one(
        self, prompt: Sequence[int], max_tokens: int, stop: Sequence[str], temperature: float
    ) -> Generation:
        if max_tokens <= 0:
            # Servers reject max_tokens=0; an exhausted budget is simply a length stop.
            return Generation(token_ids=[], text="", finish_reason="length")
        choice = self._post(self._request_body(prompt, max_tokens, stop, temperature))["choices"][0]
        return self._to_generation(choice, stop)

    def _to_generation(self, choice: dict[str, Any], stop: Sequence[str]) -> Generation:
        text, finish = normalise_completion(
            choice.get("text") or "",
            choice.get("finish_reason"),
            _matched_stop(choice),
            stop,
            self.eos_token,
        )
        server_ids = choice.get("token_ids")
        if server_ids is not None and self.decode(server_ids) == text:
            token_ids = list(server_ids)
        else:
            # Re-encoding is exact for what follows (budgets, masks) up to tokenisation merges.
            body = text[: -len(self.eos_token)] if finish == "eos" else text
            token_ids = self.encode(body)
            if finish == "eos":
                token_ids.append(self.tokenizer.eos_token_id)
        return Generation(token_ids=token_ids, text=text, finish_reason=finish)


def normalise_completion(
    text: str, finish_reason: str | None, matched: Any, stop: Sequence[str], eos_token: str
) -> tuple[str, FinishReason]:
    """Text cut right after the first stop string (kept), or ending with EOS, and why it ended.

    `matched` is vLLM's stop_reason or SGLang's matched_stop: a string for a stop string, an int for a
    stop token (EOS), None for EOS on vLLM. Engines that trim the stop string get it put back.
    """
    cut = _first_stop_end(text, stop)
    if cut is not None:
        return text[:cut], "stop"
    if isinstance(matched, str) and matched in stop:
        return text + matched, "stop"
    if finish_reason == "length":
        return text, "length"
    if not text.endswith(eos_token):
        text += eos_token
    return text, "eos"


def _matched_stop(choice: dict[str, Any]) -> Any:
    """vLLM's stop_reason, else SGLang's matched_stop (a server may send both keys, one null)."""
    matched = choice.get("stop_reason")
    return matched if matched is not None else choice.get("matched_stop")


def _first_stop_end(text: str, stop: Sequence[str]) -> int | None:
    """End index of the earliest stop string in text, or None."""
    ends = [text.index(s) + len(s) for s in stop if s and s in text]
    return min(ends) if ends else None
