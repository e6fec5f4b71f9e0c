"""Paired bootstrap of a mean difference: the resampling behind every "A minus B with its interval" in lckd_med.

The unit is whatever the caller pairs (a test case of one seed, in :mod:`lckd_med.benchmarks.quality` and
:mod:`lckd_med.reports.comparison_stats`): both runs were scored on the same units, so the difference per unit is
resampled with replacement and the percentile interval of the resampled means is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(
    differences: Sequence[float] | np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of paired differences and its percentile bootstrap interval.

    Args:
        differences: one difference per paired unit, shape ``(N,)``; NaN units (a metric undefined for that unit)
            are ignored.
        resamples: bootstrap resamples (>= 1).
        level: interval coverage in (0, 1).
        seed: generator seed (fixed, so reports are reproducible).

    Returns:
        ``(mean, low, high)``; all NaN when no unit is finite.

    Raises:
        ValueError: a bad ``resamples``/``level`` or a differences array that is not 1-D.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    diff = np.asarray(differences, dtype=np.float64)
    if diff.ndim != 1:
        raise ValueError(f"differences must be 1-D (one value per paired unit), got shape {diff.shape}")
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, diff.size, size=(int(resamples), diff.size))
    boot = diff[draws].mean(axis=1)
    tail = 100.0 * (1.0 - float(level)) / 2.0
    return float(diff.mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100.0 - tail))
