"""RFNet's / mmFormer's softmax loss: weighted cross-entropy + soft Dice, by hand and against the published code.

``tests/fixtures/rfnet/published_losses.json`` holds the values of the published ``softmax_weighted_loss`` and
``dice_loss`` (dyh127/RFNet at 1e475fa, utils/criterions.py), computed outside this repository on the inputs that
:func:`published_case` regenerates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lckd_med.losses.softmax_seg import SoftmaxSegLoss, soft_dice_loss, softmax_weighted_cross_entropy

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "rfnet" / "published_losses.json").read_text())

# one sample, 2 classes, 3 voxels: class-0 target at voxel 0, class 1 at voxels 1 and 2
PROBS = torch.tensor([[0.8, 0.3, 0.999], [0.2, 0.7, 0.001]]).reshape(1, 2, 3, 1, 1)
TARGET = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).reshape(1, 2, 3, 1, 1)


def published_case(batch: int, size: int, seed: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities ``(B, 4, n, n, n)``, one-hot target and labels, as the fixture's ``generator`` describes."""
    t = torch.arange(batch * 4 * size**3, dtype=torch.float64).reshape(batch, 4, size, size, size)
    probs = torch.softmax(4.0 * torch.sin(t * 0.37 + seed) + 2.0 * torch.cos(t * 1.3 - seed), dim=1).float()
    v = torch.arange(batch * size**3, dtype=torch.float64).reshape(batch, size, size, size)
    labels = torch.floor(2.5 * (torch.sin(v * 0.91 + seed) + 1.0)).long().clamp(0, 3)
    labels[-1][labels[-1] == 3] = 0
    onehot = F.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    return probs, onehot, labels


def test_weighted_cross_entropy_by_hand():
    """Weights 1 - share of the sample's voxels (2/3, 1/3); p = 0.001 is clamped to 0.005; mean over 3 voxels."""
    w0, w1 = 2 / 3, 1 / 3
    expected = (-w0 * math.log(0.8) - w1 * math.log(0.7) - w1 * math.log(0.005)) / 3
    assert softmax_weighted_cross_entropy(PROBS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    eps = 1e-7
    d0 = 2 * 0.8 / (0.8 + 0.3 + 0.999 + 1 + eps)
    d1 = 2 * (0.7 + 0.001) / (0.2 + 0.7 + 0.001 + 2 + eps)
    assert soft_dice_loss(PROBS, TARGET).item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_clamp_removes_the_gradient_below_0005():
    probs = PROBS.clone().requires_grad_(True)
    softmax_weighted_cross_entropy(probs, TARGET).backward()
    grad = probs.grad.reshape(2, 3)
    assert grad[1, 2].item() == 0.0  # target class at 0.001 < 0.005: clamped, no gradient
    assert grad[1, 1].item() == pytest.approx(-(1 / 3) / 0.7 / 3, rel=1e-5)
    assert grad[0, 1].item() == 0.0 and grad[0, 2].item() == 0.0  # non-target classes: no CE gradient


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"B{c['batch']}-n{c['size']}")
def test_equals_published_criterions(case):
    """Equal to the published functions; the second case has no class 3 at all, the first not in its last sample."""
    probs, onehot, labels = published_case(case["batch"], case["size"], case["seed"])
    assert torch.bincount(labels.flatten(), minlength=4).tolist() == case["label_histogram"]
    assert (probs < 0.005).float().mean().item() == pytest.approx(case["fraction_below_0.005"], rel=1e-5)
    wce = softmax_weighted_cross_entropy(probs, onehot).item()
    dice = soft_dice_loss(probs, onehot).item()
    assert wce == pytest.approx(case["softmax_weighted_loss"], rel=1e-6)
    assert dice == pytest.approx(case["dice_loss"], rel=1e-6)
    loss = SoftmaxSegLoss(softmax=False)
    assert loss(probs, onehot).item() == pytest.approx(wce + dice, rel=1e-6)
    assert loss(probs, labels[:, None]).item() == pytest.approx(wce + dice, rel=1e-6)  # class indices


def test_loss_on_logits_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5, 5, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 5, 5, 5))
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels[:, 0], 4).permute(0, 4, 1, 2, 3).float()
    wce, dice = softmax_weighted_cross_entropy(probs, onehot), soft_dice_loss(probs, onehot)
    torch.testing.assert_close(SoftmaxSegLoss()(logits, labels), wce + dice)
    torch.testing.assert_close(SoftmaxSegLoss(lambda_ce=0.5, lambda_dice=2.0)(logits, onehot), 0.5 * wce + 2.0 * dice)
    torch.testing.assert_close(SoftmaxSegLoss(lambda_ce=0.0)(logits, onehot), dice)
    SoftmaxSegLoss()(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"softmax": 1}, "softmax"),
        ({"clamp_min": 0.0}, "clamp_min"),
        ({"clamp_min": 1.0}, "clamp_min"),
        ({"dice_eps": 0}, "dice_eps"),
        ({"dice_eps": True}, "dice_eps"),
        ({"lambda_ce": -1.0}, "lambda_ce"),
        ({"lambda_dice": "1"}, "lambda_dice"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxSegLoss(**kwargs)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), r"C>=2"),
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2), "one-hot target"),
        (torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 3), "class-index target must be"),
        (torch.zeros(1, 4, 2, 2), torch.full((1, 1, 2, 2), 4), r"in 0..3"),
        (torch.zeros(1, 4, 2, 2), torch.full((1, 1, 2, 2), 0.5), "integers"),
    ],
)
def test_input_validation(pred, target, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxSegLoss()(pred, target)
