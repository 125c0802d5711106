"""GRPO's outcome advantage, as the original computes it (verl compute_grpo_outcome_advantage).

Each prompt's `group_size` rollouts are consecutive; a rollout's advantage is its reward minus the
group mean, divided by the group's standard deviation (unbiased, like torch.std) plus eps. A group
of one gets mean 0 and std 1, as in verl. TRL computes the same with scale_rewards="group", except
that it adds 1e-4 instead of 1e-6 to the std (see tests/test_grpo.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_advantages(rewards: Sequence[float] | torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each consecutive group of `group_size` rewards."""
    scores = torch.as_tensor(rewards, dtype=torch.float32)
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} rewards do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(groups), torch.ones_like(groups)
    else:
        mean, std = groups.mean(dim=1, keepdim=True), groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)
