"""One interface for every text generator: the in-process transformers model (CPU default, and the
policy inside training) and OpenAI-compatible completion servers (vLLM, SGLang).

The multi-turn search rollout (training/rollout.py) and every evaluation method speak only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "eos", "length"]


@dataclass
class Generation:
    """One continuation of one prompt.

    token_ids: the generated tokens, cut right after the stop string or the EOS token (EOS included).
    text: those tokens decoded without skipping special tokens.
    finish_reason: "stop" (a stop string ended it), "eos" (the model ended it), "length" (the budget did).
    logprobs: per-token log-probabilities under the sampling policy, when the backend gives them.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None


class Generator(Protocol):
    """Continues a batch of token-id prompts. Implementations must honour `stop` strings."""

    eos_token: str

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int] | int,
        stop: Sequence[str] = (),
        temperature: float = 1.0,
    ) -> list[Generation]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...
