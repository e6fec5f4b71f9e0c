"""lckd_med.metrics.paired_bootstrap: the resampling behind every paired difference with an interval."""

from __future__ import annotations

import numpy as np
import pytest

from lckd_med.metrics import paired_bootstrap


@pytest.mark.parametrize(
    ("diffs", "mean", "exact"),
    [
        ([0.2, 0.2, 0.2], 0.2, True),  # no spread: the interval is the point
        ([0.1, np.nan, 0.3], 0.2, False),  # NaN units (undefined metric) are ignored
        ([-1.0, 1.0] * 10, 0.0, False),
    ],
)
def test_mean_and_interval(diffs, mean, exact):
    m, lo, hi = paired_bootstrap(diffs, resamples=500)
    assert m == pytest.approx(mean)
    assert lo <= m <= hi
    if exact:
        assert lo == pytest.approx(mean) and hi == pytest.approx(mean)
    else:
        assert lo < hi


def test_reproducible_and_narrower_with_more_units():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.1, 0.2, 10), rng.normal(0.1, 0.2, 1000)
    assert paired_bootstrap(small) == paired_bootstrap(small)
    (_, a, b), (_, c, d) = paired_bootstrap(small), paired_bootstrap(large)
    assert d - c < b - a


def test_no_finite_unit_is_nan():
    assert all(np.isnan(v) for v in paired_bootstrap([np.nan, np.nan]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resamples": 0}, "resamples"),
        ({"resamples": True}, "resamples"),
        ({"level": 1.0}, "level"),
        ({"level": 0}, "level"),
        ({"differences": [[0.1, 0.2]]}, "1-D"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(**{"differences": [0.1, 0.2], **kwargs})
