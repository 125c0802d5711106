"""The Generator protocol on the vLLM engine that TRL's GRPOTrainer holds (`use_vllm: true`, GPU only).

Colocate mode: the trainer's own `LLM` (`trainer.vllm_generation.llm`), whose weights TRL syncs before
every rollout_func call. Server mode (`trl vllm-serve`): its OpenAI-compatible /v1/completions, through
the project's OpenAICompletionsGenerator. UNTESTED here (no GPU, no vLLM on the development machine);
it follows vLLM's documented SamplingParams/RequestOutput API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from research_rl.generation import Generation, TokenizerText, per_prompt_budgets


class VLLMColocateGenerator(TokenizerText):
    """Per-row SamplingParams (budget, stop string kept in the output, sampled-token log-prob)."""

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.eos_token: str = tokenizer.eos_token
        self.eos_id = tokenizer.eos_token_id

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int] | int,
        stop: Sequence[str] = (),
        temperature: float = 1.0,
    ) -> list[Generation]:
        from vllm import SamplingParams, TokensPrompt

        budgets = per_prompt_budgets(max_new_tokens, len(prompts))
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                max_tokens=max(1, budget),
                stop=list(stop) or None,
                include_stop_str_in_output=True,  # the rollout needs `</search>` in the model's tokens
                skip_special_tokens=False,
                logprobs=0,
            )
            for budget in budgets
        ]
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return [self._to_generation(out.outputs[0]) for out in outputs]

    def _to_generation(self, completion: Any) -> Generation:
        ids = list(completion.token_ids)
        logprobs = [next(iter(lp.values())).logprob for lp in completion.logprobs] if completion.logprobs else None
        if completion.finish_reason == "length":
            reason = "length"
        elif isinstance(completion.stop_reason, str):
            reason = "stop"
        else:  # EOS (stop_reason None) or a stop token id: cut after the first EOS, as the original does
            reason = "eos"
            if self.eos_id in ids:
                ids = ids[: ids.index(self.eos_id) + 1]
        logprobs = logprobs[: len(ids)] if logprobs is not None else None
        return Generation(token_ids=ids, text=self.decode(ids), finish_reason=reason, logprobs=logprobs)


def vllm_generator(trainer: Any, tokenizer: Any) -> Any:
    """The Generator over the trainer's vLLM backend, colocated or served."""
    backend = trainer.vllm_generation
    if trainer.args.vllm_mode == "colocate":
        return VLLMColocateGenerator(backend.llm, tokenizer)
    from research_rl.generation.openai import OpenAICompletionsGenerator

    client = backend.vllm_client
    return OpenAICompletionsGenerator(f"{client.base_url}/v1", getattr(client, "model", "default"), tokenizer)
