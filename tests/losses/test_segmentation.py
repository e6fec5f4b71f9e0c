"""segmentation_loss / DiceBCELoss: Dice + BCE on independent region channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from lckd_med.losses import DiceBCELoss, segmentation_loss

# features (B=2, M=4, C=1, S=2), modality order flair, t1, t1ce, t2
FEATS = torch.tensor(
    [
        [[[1.0, 2.0]], [[9.0, 9.0]], [[0.0, 4.0]], [[3.0, 3.0]]],
        [[[5.0, 5.0]], [[2.0, 0.0]], [[1.0, 1.0]], [[7.0, 7.0]]],
    ]
)
MASK = torch.tensor([[True, False, True, True], [False, True, True, False]])


def _logits_target():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = torch.rand(2, 3, 6, 6, 6) > 0.6
    return logits, target


def _per_channel_bce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's BCE term: one BCE per region channel (mean over batch and voxels), summed over the 3."""
    return sum(F.binary_cross_entropy_with_logits(logits[:, c], target[:, c].float()) for c in range(logits.shape[1]))


def test_segmentation_loss_default_is_mean_dice_plus_sum_of_channel_bces():
    logits, target = _logits_target()
    expected = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5)(logits, target.float())
    expected = expected + _per_channel_bce_sum(logits, target)
    torch.testing.assert_close(segmentation_loss()(logits, target), expected)


def test_mean_bce_option_is_one_third_of_the_reference_bce():
    logits, target = _logits_target()
    loss = segmentation_loss(lambda_dice=0.0, bce_reduction="mean")
    torch.testing.assert_close(loss(logits, target), F.binary_cross_entropy_with_logits(logits, target.float()))
    torch.testing.assert_close(3 * loss(logits, target), _per_channel_bce_sum(logits, target))


def test_bad_bce_reduction():
    with pytest.raises(ValueError, match="bce_reduction"):
        DiceBCELoss(bce_reduction="sum")


def test_segmentation_loss_is_not_monai_dice_ce_softmax():
    """Guards the reason for DiceBCELoss: MONAI's DiceCELoss uses softmax CE for 3 channels."""
    logits, target = _logits_target()
    ours = segmentation_loss()(logits, target)
    monai_dce = DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5)(logits, target.float())
    assert not torch.allclose(ours, monai_dce)


def test_segmentation_loss_overrides_and_weights():
    logits, target = _logits_target()
    loss = segmentation_loss(batch=True, lambda_dice=0.0, lambda_bce=2.0)
    assert loss.dice.batch is True
    torch.testing.assert_close(loss(logits, target), 2 * _per_channel_bce_sum(logits, target))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"softmax": True},
        {"sigmoid": False},
        {"to_onehot_y": True},
        {"include_background": False},
        {"other_act": torch.tanh},
    ],
)
def test_segmentation_loss_refuses_non_sigmoid_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        segmentation_loss(**kwargs)


@pytest.mark.parametrize("kwargs", [{"lambda_dice": -1.0}, {"lambda_bce": -0.5}])
def test_dice_bce_negative_weight(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DiceBCELoss(**kwargs)


def test_dice_bce_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        DiceBCELoss()(torch.randn(1, 3, 2, 2, 2), torch.ones(1, 1, 2, 2, 2))


@pytest.mark.parametrize("spatial", [(4, 5, 6), (7, 8)], ids=["3d", "2d"])
def test_pos_weight_is_per_channel_in_2d_and_3d(spatial):
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, *spatial), (torch.rand(2, 3, *spatial) > 0.5).float()
    weight = torch.tensor([1.0, 2.0, 5.0])
    got = DiceBCELoss(lambda_dice=0.0, pos_weight=weight, bce_reduction="mean", sigmoid=True)(logits, target)
    manual = -(weight.view(1, 3, *[1] * len(spatial)) * target * F.logsigmoid(logits))
    manual = (manual - (1 - target) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(got, manual)
