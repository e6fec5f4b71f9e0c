"""Quality benchmark helpers (the bundle runs themselves are exercised by the bundle tests)."""

from __future__ import annotations

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
