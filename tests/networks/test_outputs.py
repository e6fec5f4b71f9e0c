"""lckd_med.networks.outputs: output kinds, region probabilities of a softmax over the BraTS classes, the decision
rules, and the kinds the registered networks declare."""

from __future__ import annotations

import math

import pytest
import torch

from lckd_med.networks import NETWORKS, LCKDNet, MMFormerNet, RFNet
from lckd_med.networks.outputs import (
    CLASS_LABELS,
    class_probabilities,
    default_decision,
    output_channels,
    output_kind,
    region_logits,
    region_masks,
    region_probabilities,
)


def _logits(p: list[float]) -> torch.Tensor:
    """``(1, 4, 1, 1, 1)`` class logits whose softmax is ``p``."""
    return torch.log(torch.tensor(p, dtype=torch.float64)).reshape(1, 4, 1, 1, 1)


# class probabilities (bg, NCR, ED, ET) -> (ET, TC, WT), argmax label, threshold-0.5 label (BraTS 2018 values)
TABLE = [
    ([0.7, 0.1, 0.1, 0.1], (0.1, 0.2, 0.3), 0, 0),
    ([0.1, 0.1, 0.7, 0.1], (0.1, 0.2, 0.9), 2, 2),
    ([0.1, 0.6, 0.2, 0.1], (0.1, 0.7, 0.9), 1, 1),
    ([0.1, 0.2, 0.1, 0.6], (0.6, 0.8, 0.9), 4, 4),
    # argmax and threshold disagree: background is the single most likely class, but the tumour classes together
    # pass 0.5 (WT = 0.6): the published rule (argmax) says background, a region threshold says oedema
    ([0.4, 0.05, 0.3, 0.25], (0.25, 0.3, 0.6), 0, 2),
    # TC passes 0.5 though neither NCR nor ET is the most likely class: argmax says oedema
    ([0.05, 0.3, 0.4, 0.25], (0.25, 0.55, 0.95), 2, 1),
]


def _label(masks: torch.Tensor) -> int:
    et, tc, wt = (bool(m) for m in masks.flatten())
    return 4 if et else 1 if tc else 2 if wt else 0


@pytest.mark.parametrize("probs, regions, argmax_label, threshold_label", TABLE)
def test_classes_to_regions_and_both_decisions(probs, regions, argmax_label, threshold_label):
    got = region_probabilities(_logits(probs), "classes", dim=1)
    assert got.shape == (1, 3, 1, 1, 1)
    torch.testing.assert_close(got.flatten(), torch.tensor(regions, dtype=got.dtype), rtol=0, atol=1e-6)
    assert _label(region_masks(got, "argmax", dim=1)) == argmax_label
    assert _label(region_masks(got, "threshold", 0.5, dim=1)) == threshold_label
    # the classes come back from the regions, so argmax over them is argmax over the published softmax
    torch.testing.assert_close(class_probabilities(got, dim=1).flatten(), torch.tensor(probs, dtype=got.dtype))
    assert CLASS_LABELS[int(torch.argmax(torch.tensor(probs)))] == argmax_label


def test_region_probabilities_are_nested_and_in_unit_interval():
    torch.manual_seed(0)
    logits = 20 * torch.randn(2, 4, 5, 6, 7)  # saturated softmaxes included
    p = region_probabilities(logits, "classes")
    assert p.shape == (2, 3, 5, 6, 7) and float(p.min()) >= 0 and float(p.max()) <= 1
    assert bool((p[:, 0] <= p[:, 1]).all()) and bool((p[:, 1] <= p[:, 2]).all())  # ET <= TC <= WT exactly
    # argmax of the regions' classes is the argmax of the logits (away from ties)
    cls = torch.argmax(logits, dim=1)
    masks = region_masks(p, "argmax")
    torch.testing.assert_close(masks[:, 0], cls == 3)
    torch.testing.assert_close(masks[:, 2], cls > 0)
    torch.testing.assert_close(torch.sigmoid(region_logits(logits, "classes")), p, rtol=0, atol=1e-6)
    assert bool(torch.isfinite(region_logits(logits, "classes")).all())  # saturated softmaxes: finite logits


def test_regions_kind_is_the_sigmoid_and_2d_axes():
    x = torch.randn(3, 3, 4, 4)
    torch.testing.assert_close(region_probabilities(x, "regions", dim=-3), torch.sigmoid(x))
    assert region_logits(x, "regions", dim=-3) is x
    assert region_masks(torch.sigmoid(x), "argmax", dim=-3).shape == x.shape


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: region_probabilities(torch.zeros(1, 3, 2, 2, 2), "softmax4"), "unknown network output kind"),
        (lambda: region_probabilities(torch.zeros(1, 3, 2, 2, 2), "classes"), "'classes' output has 4 channels"),
        (lambda: region_probabilities(torch.zeros(1, 4, 2, 2, 2), "regions"), "'regions' output has 3 channels"),
        (lambda: region_masks(torch.zeros(1, 3, 2, 2, 2), "vote"), "decision must be one of"),
        (lambda: default_decision("logits"), "unknown network output kind"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_registered_networks_declare_their_kind():
    assert NETWORKS["RFNet"] is RFNet and NETWORKS["MMFormerNet"] is MMFormerNet
    assert output_kind(RFNet(filters=(4, 8), fusion_hidden=4, region_hidden=4)) == "classes"
    assert output_kind(LCKDNet(filters=(4, 8))) == "regions"
    assert MMFormerNet.output_kind == "classes"
    assert (default_decision("classes"), default_decision("regions")) == ("argmax", "threshold")
    assert (output_channels("classes"), output_channels("regions")) == (4, 3)
    wrapped = torch.nn.Module()
    wrapped.module = RFNet(filters=(4, 8), fusion_hidden=4, region_hidden=4)  # a DDP-like wrapper
    assert output_kind(wrapped) == "classes"
    assert math.isclose(float(region_probabilities(torch.zeros(1, 4, 1, 1, 1), "classes")[0, 2]), 0.75)
