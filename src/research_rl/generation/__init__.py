"""One interface for every text generator: the in-process transformers model (CPU default, and the
policy inside training) and OpenAI-compatible completion servers (vLLM, SGLang).

The multi-turn search rollout (training/rollout.py) and every evaluation method speak only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

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


class TokenizerText:
    """encode/decode through a Hugging Face tokenizer as every backend needs them: no special tokens
    added when encoding, none skipped when decoding (the reward must see the EOS)."""

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)


def per_prompt_budgets(max_new_tokens: Sequence[int] | int, n_prompts: int) -> list[int]:
    """One token budget per prompt, from a single budget or a list of them."""
    budgets = [max_new_tokens] * n_prompts if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n_prompts:
        raise ValueError(f"{n_prompts} prompts but {len(budgets)} token budgets")
    return budgets
