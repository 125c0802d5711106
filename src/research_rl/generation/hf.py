"""The Generator protocol on an in-process transformers causal LM (the CPU default, and the policy
inside training).

A hand-written sampling loop rather than `model.generate`, because the rollout needs three things
generate() does not give together: a token budget per row, stop strings honoured per row (a row that
produced `</search>` stops while the others go on), and the log-prob of every sampled token under the
distribution it was sampled from (the temperature-scaled one, which is what TRL recomputes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from research_rl.generation import FinishReason, Generation, TokenizerText, per_prompt_budgets


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config (instruct models end on several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    return ids


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and attention mask, so every row's next token is in the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


class TransformersGenerator(TokenizerText):
    """Batched sampling (greedy at temperature 0) with per-row budgets, stop strings and EOS."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device | None = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.eos_token: str = tokenizer.eos_token
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _hit_stop(self, tokens: list[int], stop: Sequence[str]) -> bool:
        """Did the newest token complete a stop string? A string of n characters spans at most n tokens,
        so only that tail is decoded (an earlier match would already have stopped the row)."""
        return any(s in self.decode(tokens[-len(s) :]) for s in stop)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int] | int,
        stop: Sequence[str] = (),
        temperature: float = 1.0,
    ) -> list[Generation]:
        if not prompts:
            return []
        budgets = per_prompt_budgets(max_new_tokens, len(prompts))
        was_training = self.model.training
        self.model.eval()  # the KV cache is off under gradient checkpointing in train mode
        try:
            return self._sample(prompts, budgets, list(stop), temperature)
        finally:
            self.model.train(was_training)

    def _sample(
        self, prompts: Sequence[Sequence[int]], budgets: list[int], stop: list[str], temperature: float
    ) -> list[Generation]:
        n = len(prompts)
        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        reasons: list[FinishReason | None] = ["length" if b <= 0 else None for b in budgets]
        past = None
        step_input = ids
        while any(r is None for r in reasons):
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1] :]
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.past_key_values
            next_ids, next_logprobs = self._pick(out.logits[:, -1, :].float(), temperature)
            for row in range(n):
                if reasons[row] is not None:
                    continue
                token = int(next_ids[row])
                tokens[row].append(token)
                logprobs[row].append(float(next_logprobs[row]))
                if token in self.eos_ids:
                    reasons[row] = "eos"
                elif stop and self._hit_stop(tokens[row], stop):
                    reasons[row] = "stop"
                elif len(tokens[row]) >= budgets[row]:
                    reasons[row] = "length"
            # Finished rows keep being fed (pad) so the batch stays rectangular; their output is ignored.
            feed = [int(next_ids[row]) if reasons[row] is None else self.pad_id for row in range(n)]
            step_input = torch.tensor(feed, dtype=torch.long, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
        return [
            Generation(token_ids=t, text=self.decode(t), finish_reason=r, logprobs=lp)
            for t, r, lp in zip(tokens, reasons, logprobs, strict=True)
        ]

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (or argmax at temperature 0); return the tokens and their log-probs under the
        distribution actually sampled from."""
        if temperature <= 0:
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logits.argmax(dim=-1)
        else:
            logp = torch.log_softmax(logits / temperature, dim=-1)
            chosen = torch.multinomial(logp.exp(), num_samples=1).squeeze(1)
        return chosen, logp.gather(1, chosen.unsqueeze(1)).squeeze(1)
