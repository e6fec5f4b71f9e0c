"""CrossModalDistillationLoss (hand-computed values, per-sample pairs, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lckd_med.losses import CrossModalDistillationLoss, teacher_mask

# features (B=2, M=4, C=1, S=2), modality order flair, t1, t1ce, t2
FEATS = torch.tensor(
    [
        [[[1.0, 2.0]], [[9.0, 9.0]], [[0.0, 4.0]], [[3.0, 3.0]]],
        [[[5.0, 5.0]], [[2.0, 0.0]], [[1.0, 1.0]], [[7.0, 7.0]]],
    ]
)
MASK = torch.tensor([[True, False, True, True], [False, True, True, False]])


def _feats() -> torch.Tensor:
    return FEATS.clone().requires_grad_(True)


@pytest.mark.parametrize(
    ("teachers", "distance", "expected"),
    [
        # t1ce teaches: sample 0 -> flair |1-0|,|2-4| = 1.5 ; t2 |3-0|,|3-4| = 2 ; sample 1 -> t1 |2-1|,|0-1| = 1
        (["t1ce"], "l1", (1.5 + 2.0 + 1.0) / 3),
        (["t1ce"], "mse", ((1 + 4) / 2 + (9 + 1) / 2 + (1 + 1) / 2) / 3),
        # flair teaches only in sample 0: t1ce |0-1|,|4-2| = 1.5 ; t2 |3-1|,|3-2| = 1.5 ; t1ce teaches as above
        (["flair", "t1ce"], "l1", (1.5 + 1.5 + 1.5 + 2.0 + 1.0) / 5),
        # t1 present only in sample 1, with t1ce: |1-2|,|1-0| = 1
        (["t1"], "l1", 1.0),
    ],
)
def test_hand_computed_values_mean_option(teachers, distance, expected):
    loss = CrossModalDistillationLoss(distance=distance, reduction="mean")(_feats(), MASK, teachers)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def _reference_kd(feats: torch.Tensor, kept: list[str], teachers: list[str]) -> torch.Tensor:
    """The reference arithmetic written out: SUM over (teacher, present student) of a batch-mean L1."""
    order = ["flair", "t1", "t1ce", "t2"]
    total = torch.zeros(())
    for t in teachers:
        if t not in kept:
            continue
        for s in kept:
            ti, si = order.index(t), order.index(s)
            total = total + torch.nn.functional.l1_loss(feats[:, si], feats[:, ti].detach())
    return total


@pytest.mark.parametrize(
    ("kept", "teachers"),
    [
        (["flair", "t1", "t1ce", "t2"], ["t1ce", "flair"]),  # phase 1: 2 teachers x 3 students = 6 pairs
        (["flair", "t1ce", "t2"], ["t1ce"]),
        (["t1", "t1ce"], ["flair", "t1ce"]),  # an absent teacher does not teach
        (["t2"], ["t1ce"]),  # no teacher present: 0
    ],
)
def test_default_is_the_reference_pair_sum_on_a_known_feature_set(kept, teachers):
    torch.manual_seed(3)
    feats = torch.randn(2, 4, 3, 4, 4, 4)
    mask = torch.tensor([[m in kept for m in ("flair", "t1", "t1ce", "t2")]] * 2)  # one subset per batch
    loss = CrossModalDistillationLoss()(feats, mask, teachers)
    torch.testing.assert_close(loss, _reference_kd(feats, kept, teachers))
    if len(kept) == 4 and len(teachers) == 2:
        # the reference value is 6x the pair average: averaging is an option, not the default
        mean = CrossModalDistillationLoss(reduction="mean")(feats, mask, teachers)
        torch.testing.assert_close(loss, 6 * mean)


def test_pair_sum_with_per_sample_subsets_divides_by_the_batch():
    loss = CrossModalDistillationLoss(reduction="pair_sum")(_feats(), MASK, ["t1ce"])
    assert loss.item() == pytest.approx((1.5 + 2.0 + 1.0) / 2)


def test_sum_reduction():
    loss = CrossModalDistillationLoss(reduction="sum")(_feats(), MASK, ["t1ce"])
    assert loss.item() == pytest.approx(1.5 + 2.0 + 1.0)


@pytest.mark.parametrize(
    ("mask", "teachers"),
    [
        (MASK, torch.tensor([False, False, False, False])),  # no teacher elected
        (torch.tensor([[True, True, False, True], [True, True, False, True]]), ["t1ce"]),  # teacher absent
        (torch.tensor([[False, False, True, False], [False, False, True, False]]), ["t1ce"]),  # teacher alone
        (MASK, []),
    ],
)
def test_zero_and_zero_gradient_without_pairs(mask, teachers):
    feats = _feats()
    loss = CrossModalDistillationLoss()(feats, mask, teachers)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_gradient_reaches_students_not_teacher():
    feats = _feats()
    CrossModalDistillationLoss()(feats, MASK, ["t1ce"]).backward()
    per_slot = feats.grad.abs().sum(dim=(2, 3))
    assert torch.equal(per_slot[:, 2], torch.zeros(2))  # teacher detached
    assert (per_slot[MASK & ~torch.tensor([False, False, True, False])] > 0).all()  # present students
    assert torch.equal(per_slot[~MASK], torch.zeros_like(per_slot[~MASK]))  # missing modalities


def test_missing_modality_content_does_not_leak():
    poisoned = FEATS.clone()
    poisoned[~MASK] = float("nan")
    loss = CrossModalDistillationLoss()(poisoned, MASK, ["t1ce"])
    assert loss.item() == pytest.approx((1.5 + 2.0 + 1.0) / 2)


def test_list_of_levels_is_mean_of_levels():
    torch.manual_seed(0)
    levels = [torch.randn(2, 4, 3, 4, 4, 4), torch.randn(2, 4, 5, 2, 2, 2)]
    kd = CrossModalDistillationLoss()
    expected = (kd(levels[0], MASK, ["t1ce"]) + kd(levels[1], MASK, ["t1ce"])) / 2
    torch.testing.assert_close(kd(levels, MASK, ["t1ce"]), expected)


@pytest.mark.parametrize(
    "teachers",
    [
        ["t1ce", "flair"],
        ("flair", "t1ce"),
        torch.tensor([True, False, True, False]),
        np.array([True, False, True, False]),
        [True, False, True, False],
    ],
)
def test_teacher_formats_agree(teachers):
    assert torch.equal(teacher_mask(teachers, 4), torch.tensor([True, False, True, False]))


def test_mask_broadcast_from_one_dim():
    kd = CrossModalDistillationLoss()
    one = kd(_feats(), torch.tensor([True, False, True, True]), ["t1ce"])
    full = kd(_feats(), torch.tensor([[True, False, True, True]] * 2), ["t1ce"])
    torch.testing.assert_close(one, full)


@pytest.mark.parametrize(("kwargs", "match"), [({"distance": "l2"}, "distance"), ({"reduction": "none"}, "reduction")])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossModalDistillationLoss(**kwargs)


@pytest.mark.parametrize(
    ("features", "mask", "teachers", "error", "match"),
    [
        (FEATS, MASK, "t1ce", TypeError, "one string"),
        (FEATS, MASK, ["t5"], ValueError, "distinct keys"),
        (FEATS, MASK, ["t1", "t1"], ValueError, "distinct keys"),
        (FEATS, MASK, torch.tensor([True, False]), ValueError, r"shape \(4,\)"),
        (FEATS, MASK, torch.tensor([1, 0, 1, 0]), TypeError, "bool"),
        (FEATS, MASK, [1, 2], TypeError, "teachers"),
        (FEATS[:, :3], MASK[:, :3], ["t1"], ValueError, "need 4 modalities"),
        (FEATS, MASK.int(), ["t1"], TypeError, "bool"),
        (FEATS, MASK[:, :3], ["t1"], ValueError, "shape"),
        (FEATS[0, 0], MASK, ["t1"], ValueError, "features"),
        ([], MASK, ["t1"], ValueError, "non-empty list"),
    ],
)
def test_bad_forward_input(features, mask, teachers, error, match):
    with pytest.raises(error, match=match):
        CrossModalDistillationLoss()(features, mask, teachers)
