"""Learning-rate schedules: the reference's two-phase poly, the single-poly option, RFNet's / mmFormer's per-epoch
poly, bad arguments, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lckd_med.engines.schedules import (
    EpochPolyLR,
    TwoPhasePolyLR,
    epoch_poly_lr,
    make_lr_scheduler,
    two_phase_poly_factor,
)


def _optimizer(lr: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(scheduler, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1.0),
        (4, (1 - 4 / 8) ** 0.9),
        (7, (1 - 7 / 8) ** 0.9),
        (8, (1 - 8 / 20) ** 0.9),  # phase 2 restarts on the full-length poly, not at 1
        (19, (1 - 19 / 20) ** 0.9),
        (20, 0.0),
        (25, 0.0),
    ],
)
def test_two_phase_factor(step, expected):
    assert two_phase_poly_factor(step, total_iters=20, phase1_iters=8) == pytest.approx(expected)


def test_scheduler_follows_the_factor_and_poly_option_is_torch_polynomial():
    two = make_lr_scheduler("two_phase_poly", _optimizer(), 20, 8)
    assert _lrs(two, 20) == pytest.approx([0.01 * two_phase_poly_factor(i, 20, 8) for i in range(20)])
    poly = make_lr_scheduler("poly", _optimizer(), 20, 8)
    ref = torch.optim.lr_scheduler.PolynomialLR(_optimizer(), total_iters=20, power=0.9)
    assert _lrs(poly, 20) == pytest.approx(_lrs(ref, 20))
    # without a phase 1 the two schedules are one poly
    assert _lrs(make_lr_scheduler("two_phase_poly", _optimizer(), 20, 0), 20) == pytest.approx(
        _lrs(torch.optim.lr_scheduler.PolynomialLR(_optimizer(), total_iters=20, power=0.9), 20)
    )


def test_reference_phase2_overlap_reruns_the_last_phase1_index():
    """phase2_overlap=1: phase-2 step s is the reference's i_iter s - 1 (its phase-2 run starts at 79999)."""
    factor = lambda step: two_phase_poly_factor(step, 115000, 80000, 0.9, phase2_overlap=1)  # noqa: E731
    assert factor(79999) == pytest.approx((1 - 79999 / 80000) ** 0.9)  # last phase-1 step: unchanged
    assert factor(80000) == pytest.approx((1 - 79999 / 115000) ** 0.9)  # first phase-2 step: i_iter 79999
    assert factor(114999) == pytest.approx((1 - 114998 / 115000) ** 0.9)  # the last one run: i_iter 114998
    lrs = _lrs(make_lr_scheduler("two_phase_poly", _optimizer(), 20, 8, phase2_overlap=1), 20)
    assert lrs == pytest.approx([0.01 * two_phase_poly_factor(i, 20, 8, 0.9, 1) for i in range(20)])
    with pytest.raises(ValueError, match="two_phase_poly"):
        make_lr_scheduler("poly", _optimizer(), 20, 8, phase2_overlap=1)


def test_state_dict_round_trip_resumes_the_schedule():
    a = TwoPhasePolyLR(_optimizer(), 20, 8)
    _lrs(a, 10)
    b = TwoPhasePolyLR(_optimizer(), 20, 8)
    b.load_state_dict(a.state_dict())
    b.optimizer.param_groups[0]["lr"] = b.get_last_lr()[0]
    assert _lrs(b, 5) == pytest.approx(_lrs(a, 5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_iters": 0, "phase1_iters": 0}, "total_iters"),
        ({"total_iters": 10, "phase1_iters": 11}, "phase1_iters"),
        ({"total_iters": 10, "phase1_iters": -1}, "phase1_iters"),
        ({"total_iters": 10, "phase1_iters": 5, "power": 0.0}, "power"),
        ({"total_iters": 10, "phase1_iters": 5, "phase2_overlap": -1}, "phase2_overlap"),
        ({"total_iters": 10, "phase1_iters": 0, "phase2_overlap": 1}, "phase2_overlap"),
    ],
    ids=["total", "phase1_too_long", "phase1_negative", "power", "overlap_negative", "overlap_without_phase1"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoPhasePolyLR(_optimizer(), **kwargs)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown lr schedule"):
        make_lr_scheduler("cosine", _optimizer(), 10, 5)


def _published_epoch_lr(base_lr: float, epoch: int, num_epochs: int) -> float:
    """RFNet's / mmFormer's ``LR_Scheduler.__call__`` (utils/lr_scheduler.py:12-16), float32 ratio as published."""
    return round(base_lr * np.power(1 - np.float32(epoch) / np.float32(num_epochs), 0.9), 8)


@pytest.mark.parametrize(
    "base_lr, epoch_length, total, steps",
    [
        (2e-4, 150, 45000, [0, 1, 149, 150, 151, 2999, 3000, 44849, 44850, 44999]),  # RFNet: 300 epochs x 150
        (2e-4, 190, 190000, [0, 189, 190, 95000, 189809, 189810, 189999]),  # mmFormer: 1000 epochs x 190
        (1e-3, 4, 10, [0, 3, 4, 8, 9]),  # a last epoch cut short: ceil(10 / 4) = 3 epochs
    ],
)
def test_epoch_poly_is_the_published_per_epoch_lr(base_lr, epoch_length, total, steps):
    num_epochs = -(-total // epoch_length)
    for step in steps:
        expected = _published_epoch_lr(base_lr, step // epoch_length, num_epochs)
        assert epoch_poly_lr(base_lr, step, epoch_length, num_epochs) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    sched = make_lr_scheduler(
        "epoch_poly",
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base_lr),
        total,
        0,
        epoch_length=epoch_length,
    )
    lrs = _lrs(sched, min(total, 3 * epoch_length))
    assert lrs == pytest.approx([epoch_poly_lr(base_lr, i, epoch_length, num_epochs) for i in range(len(lrs))])
    assert len(set(lrs[:epoch_length])) == 1  # constant within an epoch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "needs epoch_length"),
        ({"epoch_length": 0}, "epoch_length must be an int >= 1"),
        ({"epoch_length": 2.5}, "epoch_length must be an int >= 1"),
        ({"epoch_length": 5, "phase2_overlap": 1}, "phase2_overlap needs"),
    ],
)
def test_epoch_poly_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lr_scheduler("epoch_poly", _optimizer(), 20, 0, **kwargs)


def test_epoch_poly_state_round_trips():
    sched = EpochPolyLR(_optimizer(), 20, 4)
    _lrs(sched, 9)
    fresh = EpochPolyLR(_optimizer(), 20, 4)
    fresh.load_state_dict(sched.state_dict())
    fresh.optimizer.param_groups[0]["lr"] = fresh.get_last_lr()[0]  # the optimizer's own state holds it on resume
    assert _lrs(fresh, 5) == pytest.approx(_lrs(sched, 5))
