"""HeMIS's fusion: mean and sample variance over the available sequences only (0 for one), at every level.

Training, sweep exactness and checkpoints are covered for every registered method in ``test_registry.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lckd_med.compare import _recipe, default_runs
from lckd_med.constants import SUBSET_NAMES, subset_to_mask
from lckd_med.demo import demo_configs
from lckd_med.engines.workflow import bundle_dir
from lckd_med.methods import METHODS
from lckd_med.methods.hemis import HeMISNet, mean_variance
from tests.testkit import merged_config


@pytest.mark.parametrize("subset", SUBSET_NAMES)
def test_mean_and_variance_over_the_available_slots(subset):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 5, 5, 5)
    mask = torch.from_numpy(subset_to_mask(subset)).expand(2, -1)
    out = mean_variance(features, mask)
    kept = features[:, mask[0]]
    var = kept.var(dim=1, unbiased=True) if kept.shape[1] > 1 else torch.zeros_like(kept[:, 0])
    torch.testing.assert_close(out, torch.cat([kept.mean(dim=1), var], dim=1))
    garbage = features.clone()
    garbage[:, ~mask[0]] = float("nan")  # a missing slot is never read
    torch.testing.assert_close(mean_variance(garbage, mask), out)


def test_registered_with_its_network_fused_at_every_level():
    assert METHODS["hemis"].network_class is HeMISNet and METHODS["hemis"].label == "HeMIS"
    net = HeMISNet(filters=(4, 8, 16))
    assert [f.conv.in_channels for f in net.fusions] == [8, 16, 32]  # [mean, variance] of every level
    assert HeMISNet.from_hparams(net.hparams).hparams == net.hparams


def test_bundle_drops_sequences_from_the_first_iteration_keeping_one_to_four():
    """HeMIS's recipe departs from LCKD's two phases (docs/methods.md): with all sequences first, its fusion at the
    CPU budget's width did not learn ET on two of three fresh seeds (docs/performance.md)."""
    from monai.bundle import ConfigParser

    lckd, hemis = Path(bundle_dir("lckd")), Path(bundle_dir("hemis"))
    base = merged_config(lckd / "train.json")
    config = merged_config(lckd / "train.json", hemis / "train.json")
    assert (base["phase1_iterations"], base["dropout_max_kept"]) == (80000, 3)  # LCKD's reference recipe
    assert (config["phase1_iterations"], config["dropout_max_kept"]) == (0, 4)
    assert config["method_handlers"] == []  # no election
    parser = ConfigParser()
    parser.read_config([str(lckd / "train.json"), str(hemis / "train.json")])
    dropout = parser.get_parsed_content("train#modality_dropout")
    assert dropout.max_kept == 4 and dropout.distribution == "uniform_size"
    # with all four available: uniform over the number kept, 1 to 4, so all four at a quarter of the steps and each
    # sequence alone at a sixteenth (rows: available subset code, columns: kept subset code; 15 = all four)
    row = dropout.table[15]
    singles = [1 << i for i in range(4)]
    assert row[15] == pytest.approx(0.25) and np.allclose(row[singles], 1 / 16) and row[0] == 0
    # the CPU demo keeps it (LCKD's demo overlay would set phase 1 back to 150 iterations)
    assert demo_configs("hemis", "training") == (
        "lckd/train.json",
        "hemis/train.json",
        "lckd/demo.json",
        "hemis/demo.json",
    )
    demo = merged_config(lckd / "train.json", hemis / "train.json", lckd / "demo.json", hemis / "demo.json")
    assert (demo["phase1_iterations"], demo["dropout_max_kept"]) == (0, 4)
    # and the comparison runs it so, and says so
    run = next(r for r in default_runs(600) if r.name == "hemis")
    assert run.bundle == "hemis" and run.overrides["phase1_iterations"] == 0 and "dropout_max_kept" not in run.overrides
    assert "random missing sequences from the first iteration" in _recipe(run)
