"""Quality benchmark helpers (the bundle runs themselves are exercised by the bundle tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lckd_med.benchmarks import quality


@pytest.mark.parametrize("name", ["lean", "lean_small"])
def test_step_time_ratio_is_positive(name):
    torch.set_num_threads(1)
    assert quality.step_time_ratio(name, [2, 2], (16, 16, 8), 1, steps=1) > 0


def test_runs_are_labelled_and_fullres_is_the_previous_default():
    assert set(quality.NETWORKS) == {"fullres", "lean", "lean_small"}
    assert quality.NETWORKS["fullres"][1] == {"network_preset": "fullres", "fill_levels": "all"}
    assert quality.NETWORKS["lean_small"][1]["filters"] is None  # the preset's own channels


def _metrics(cases, offset):
    """A subset_metrics-like table: Dice = case index / 10 + offset for every subset and region."""
    rows = [
        {"case_id": c, "subset": s, "region": r, "dice": i / 10 + offset}
        for i, c in enumerate(cases)
        for s in ("flair", "t1")
        for r in ("ET", "TC", "WT")
    ]
    return pd.DataFrame(rows)


def test_paired_differences_pools_seeds_and_pairs_cases():
    base = [_metrics(["a", "b", "c"], 0.1), _metrics(["a", "b"], 0.2)]
    other = [_metrics(["c", "b", "a"], 0.15), _metrics(["a", "b"], 0.25)]  # same cases, other order
    diffs = quality.paired_differences({"fullres": base, "lean_small": other}, resamples=200)
    assert list(diffs["region"]) == ["ET", "TC", "WT"]
    assert set(diffs["run"]) == {"lean_small"}
    assert (diffs["cases"] == 5).all()
    # "c" is index 0 in the other run's first seed: differences are not constant, so the interval is not a point
    assert diffs["difference"].iloc[0] == pytest.approx(np.mean([-15.0, 5.0, 25.0, 5.0, 5.0]))
    assert (diffs["ci_low"] <= diffs["difference"]).all() and (diffs["difference"] <= diffs["ci_high"]).all()
    assert (diffs["ci_low"] < diffs["ci_high"]).all()


def test_paired_differences_refuses_unpaired_cases():
    base = [_metrics(["a", "b"], 0.1)]
    with pytest.raises(ValueError, match="other cases"):
        quality.paired_differences({"fullres": base, "lean_small": [_metrics(["a", "x"], 0.1)]})
