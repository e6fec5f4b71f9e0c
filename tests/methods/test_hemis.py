"""HeMIS's fusion: mean and sample variance over the available sequences only (0 for one), at every level.

Training, sweep exactness and checkpoints are covered for every registered method in ``test_registry.py``.
"""

from __future__ import annotations

import pytest
import torch

from lckd_med.constants import SUBSET_NAMES, subset_to_mask
from lckd_med.methods import METHODS
from lckd_med.methods.hemis import HeMISNet, mean_variance


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
