"""Percentile-bootstrap confidence intervals for a mean over questions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], n_samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """The `level` percentile-bootstrap interval of the mean of values (resampling questions).

    Deterministic for a given seed, so a rerun writes the same metrics.json.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_samples, data.size))
    means = data[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
