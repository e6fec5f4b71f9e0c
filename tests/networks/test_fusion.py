"""mean_fill exactness against a per-sample loop, and ModalityFusion."""

from __future__ import annotations

import pytest
import torch

from lckd_med.constants import NUM_MODALITIES, SUBSET_NAMES, subset_to_mask
from lckd_med.networks.fusion import ModalityFusion, mean_fill

ALL_MASKS = torch.tensor([subset_to_mask(s).tolist() for s in SUBSET_NAMES])  # (15, 4)


def _slow_mean_fill(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = features.clone()
    for b in range(features.shape[0]):
        avail = [m for m in range(features.shape[1]) if mask[b, m]]
        mean = torch.stack([features[b, m] for m in avail]).mean(dim=0)
        for m in range(features.shape[1]):
            if not mask[b, m]:
                out[b, m] = mean
    return out


@pytest.mark.parametrize("spatial", [(3, 2, 2), (1, 1, 1), (5,)])
def test_matches_slow_loop_for_every_subset(spatial):
    torch.manual_seed(0)
    features = torch.randn(len(ALL_MASKS), NUM_MODALITIES, 3, *spatial, dtype=torch.float64)
    filled = mean_fill(features, ALL_MASKS)
    torch.testing.assert_close(filled, _slow_mean_fill(features, ALL_MASKS), rtol=0, atol=1e-12)
    m = ALL_MASKS.view(len(ALL_MASKS), NUM_MODALITIES, *([1] * (features.dim() - 2))).expand_as(features)
    assert torch.equal(filled[m], features[m])  # available features untouched


def test_missing_content_never_leaks():
    features = torch.randn(2, 4, 3, 2, 2, 2)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    poisoned = features.clone()
    poisoned[~mask] = float("nan")
    poisoned[0, 3] = float("inf")
    assert torch.equal(mean_fill(poisoned, mask), mean_fill(features, mask))


def test_gradient_reaches_only_available_features():
    features = torch.randn(1, 4, 2, 2, 2, 2, requires_grad=True)
    mask = torch.tensor([[True, False, True, False]])
    mean_fill(features, mask).sum().backward()
    per_mod = features.grad.abs().flatten(2).sum(2)[0]
    assert per_mod[1] == 0 and per_mod[3] == 0
    # each available feature: itself + 1/2 of each of the two filled copies
    torch.testing.assert_close(features.grad[0, 0], torch.full((2, 2, 2, 2), 2.0))


def test_one_dim_mask_broadcasts():
    features = torch.randn(3, 4, 2, 2, 2, 2)
    mask = torch.tensor([False, True, True, False])
    assert torch.equal(mean_fill(features, mask), mean_fill(features, mask.expand(3, 4)))


@pytest.mark.parametrize(
    ("features", "mask", "error", "match"),
    [
        (torch.randn(2, 4, 1, 2), torch.tensor([[True] * 4, [False] * 4]), ValueError, r"samples \[1\]"),
        (torch.randn(2, 4, 1, 2), torch.ones(2, 4), TypeError, "bool"),
        (torch.randn(2, 4, 1, 2), [[True] * 4] * 2, TypeError, "bool"),
        (torch.randn(2, 4, 1, 2), torch.ones(2, 3, dtype=torch.bool), ValueError, "shape"),
        (torch.randn(2, 4, 1, 2), torch.ones(3, 4, dtype=torch.bool), ValueError, "shape"),
        (torch.randn(2, 4), torch.ones(2, 4, dtype=torch.bool), ValueError, "features"),
    ],
)
def test_mean_fill_bad_input(features, mask, error, match):
    with pytest.raises(error, match=match):
        mean_fill(features, mask)


def test_fusion_shape_and_invariance_to_missing_content():
    torch.manual_seed(0)
    fusion = ModalityFusion(3).train()
    features = torch.randn(2, 4, 3, 4, 4, 4)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    out = fusion(features, mask)
    assert out.shape == (2, 3, 4, 4, 4)
    other = features.clone()
    other[~mask] = torch.randn_like(other[~mask]) * 100
    torch.testing.assert_close(fusion(other, mask), out, rtol=0, atol=1e-6)


def test_fusion_batch_one_1x1x1_training():
    fusion = ModalityFusion(3).train()
    out = fusion(torch.randn(1, 4, 3, 1, 1, 1), torch.tensor([True, False, False, False]))
    out.sum().backward()
    assert out.shape == (1, 3, 1, 1, 1)


def test_fusion_wrong_feature_shape():
    with pytest.raises(ValueError, match=r"\(B, 4, 3, H, W, D\)"):
        ModalityFusion(3)(torch.randn(1, 4, 2, 2, 2, 2), torch.ones(1, 4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels": 0}, ValueError, "channels"),
        ({"channels": 2.0}, ValueError, "channels"),
        ({"channels": 2, "num_modalities": 0}, ValueError, "num_modalities"),
        ({"channels": 2, "norm": None}, TypeError, "norm"),
        ({"channels": 2, "act": 3}, TypeError, "act"),
    ],
)
def test_fusion_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModalityFusion(**kwargs)
