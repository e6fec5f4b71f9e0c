"""Learning-rate schedules of the training bundles: the LCKD reference's two-phase poly decay, or one poly decay.

The reference trains phase 1 (all sequences) as its own run, ``lr = lr0 * (1 - it / 80000) ** 0.9`` for
``it = 0 .. 79999``, and phase 2 (missing sequences) as a new run from the phase-1 weights whose schedule is the poly of
the full length evaluated from 80k: ``lr = lr0 * (1 - it / 115000) ** 0.9`` for ``it = 80000 .. 114999``. So the LR
falls to ~0 at the end of phase 1 and jumps back to ``lr0 * (35/115) ** 0.9 = 0.343 lr0`` when phase 2 starts.
torch has no such schedule (``SequentialLR`` would restart the second poly at its own step 0), hence
:class:`TwoPhasePolyLR`.

Step convention (MONAI's ``LrScheduleHandler(epoch_level=False)`` steps after every iteration): engine iteration ``i``
(1-based) trains with the factor of step ``it = i - 1``, the reference's 0-based ``i_iter``.

Exactly, the reference's phase-2 run restarts at the phase-1 checkpoint's counter ``i_iter = 79999`` (one index before
80k) and stops after 114999: 35,001 steps. ``phase2_overlap=1`` counts phase-2 steps from that repeated index: step
``it >= 80000`` uses the reference's ``i_iter = it - 1`` in ``lr0 (1 - i_iter / 115000) ** 0.9``, so the 35,000
phase-2 iterations of a 115,000-iteration run are the reference's first 35,000 (its last one, at ``2.8e-5 lr0``, is
not run: ignite's 250-iteration epochs cannot end at the prime 115,001). The default (0) runs phase 2 as the indices
80000..114999.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

__all__ = [
    "LR_SCHEDULES",
    "TwoPhasePolyLR",
    "EpochPolyLR",
    "two_phase_poly_factor",
    "epoch_poly_lr",
    "make_lr_scheduler",
]

#: ``"two_phase_poly"``: the reference's (default of the LCKD bundle); ``"poly"``: one poly decay over all iterations;
#: ``"epoch_poly"``: RFNet's and mmFormer's poly decay set once per epoch (:class:`EpochPolyLR`).
LR_SCHEDULES: tuple[str, ...] = ("two_phase_poly", "poly", "epoch_poly")


def two_phase_poly_factor(
    step: int, total_iters: int, phase1_iters: int, power: float = 0.9, phase2_overlap: int = 0
) -> float:
    """LR multiplier at 0-based ``step``: poly over ``phase1_iters`` to 0, then the poly over ``total_iters``.

    Args:
        step: 0-based iteration index (engine iteration - 1).
        total_iters: iterations of the whole training (115000 in the reference), the phase-2 poly's length.
        phase1_iters: iterations of phase 1 (80000); 0 gives one poly over ``total_iters``.
        power: poly exponent (0.9).
        phase2_overlap: phase-2 steps are counted from ``phase1_iters - phase2_overlap`` (see the module docstring).

    Returns:
        ``(1 - step / phase1_iters) ** power`` while ``step < phase1_iters``, else
        ``(1 - (step - phase2_overlap) / total_iters) ** power``; 0 from ``total_iters`` on.
    """
    if step < phase1_iters:
        return (1.0 - step / phase1_iters) ** power
    return max(0.0, 1.0 - min(step - phase2_overlap, total_iters) / total_iters) ** power


class TwoPhasePolyLR(LRScheduler):
    """The LCKD reference's two-run poly schedule as one scheduler (see the module docstring).

    Args:
        optimizer: wrapped optimizer (its ``lr`` is ``lr0``).
        total_iters: iterations of the whole training (``>= 1``).
        phase1_iters: iterations of phase 1, ``0 <= phase1_iters <= total_iters``.
        power: poly exponent (``> 0``).
        last_epoch: as in :class:`torch.optim.lr_scheduler.LRScheduler`.
        phase2_overlap: see :func:`two_phase_poly_factor` (0, or 1 for the reference's phase-2 step indices).

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        phase1_iters: int,
        power: float = 0.9,
        last_epoch: int = -1,
        phase2_overlap: int = 0,
    ) -> None:
        if isinstance(total_iters, bool) or not isinstance(total_iters, int) or total_iters < 1:
            raise ValueError(f"total_iters must be an int >= 1, got {total_iters!r}")
        if isinstance(phase1_iters, bool) or not isinstance(phase1_iters, int) or not 0 <= phase1_iters <= total_iters:
            raise ValueError(f"phase1_iters must be an int in [0, total_iters={total_iters}], got {phase1_iters!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        if (
            isinstance(phase2_overlap, bool)
            or not isinstance(phase2_overlap, int)
            or not 0 <= phase2_overlap <= min(phase1_iters, total_iters - phase1_iters)
        ):
            raise ValueError(
                f"phase2_overlap must be an int in [0, min(phase1_iters, total_iters - phase1_iters)], "
                f"got {phase2_overlap!r}"
            )
        self.phase2_overlap = phase2_overlap
        self.total_iters = total_iters
        self.phase1_iters = phase1_iters
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        f = two_phase_poly_factor(self.last_epoch, self.total_iters, self.phase1_iters, self.power, self.phase2_overlap)
        return [base * f for base in self.base_lrs]


def epoch_poly_lr(base_lr: float, step: int, epoch_length: int, num_epochs: int, power: float = 0.9) -> float:
    """RFNet's and mmFormer's published LR (``utils/lr_scheduler.py:12-16`` of both): ``round(base_lr * (1 - epoch /
    num_epochs) ** power, 8)`` with ``epoch = step // epoch_length`` for the 0-based ``step`` (engine iteration - 1),
    so the LR is constant within an epoch; 0 from epoch ``num_epochs`` on."""
    epoch = min(step // epoch_length, num_epochs)
    return round(base_lr * (1.0 - epoch / num_epochs) ** power, 8)


class EpochPolyLR(LRScheduler):
    """The published per-epoch poly schedule of RFNet and mmFormer in iteration steps (:func:`epoch_poly_lr`).

    The published loops set the LR at the start of each epoch of ``iter_per_epoch`` iterations (RFNet: 150; mmFormer:
    ``len(train_loader)``, 190 for its BraTS2018 split); stepped every iteration (MONAI's ``LrScheduleHandler(
    epoch_level=False)``), this gives the same LR at every iteration when ``epoch_length`` is that count.

    Args:
        optimizer: wrapped optimizer (its ``lr`` is the base LR).
        total_iters: iterations of the whole training; ``num_epochs = ceil(total_iters / epoch_length)``.
        epoch_length: iterations per published epoch (``>= 1``).
        power: poly exponent (``> 0``).
        last_epoch: as in :class:`torch.optim.lr_scheduler.LRScheduler`.

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        epoch_length: int,
        power: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        for name, value in (("total_iters", total_iters), ("epoch_length", epoch_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        self.total_iters = total_iters
        self.epoch_length = epoch_length
        self.num_epochs = -(-total_iters // epoch_length)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        return [
            epoch_poly_lr(base, self.last_epoch, self.epoch_length, self.num_epochs, self.power)
            for base in self.base_lrs
        ]


def make_lr_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    num_iterations: int,
    phase1_iterations: int,
    power: float = 0.9,
    phase2_overlap: int = 0,
    epoch_length: int | None = None,
) -> Any:
    """The schedule named ``name`` (one of :data:`LR_SCHEDULES`).

    Args:
        name: ``"two_phase_poly"`` (:class:`TwoPhasePolyLR`, the LCKD reference) or ``"poly"``
            (:class:`torch.optim.lr_scheduler.PolynomialLR` over ``num_iterations``, the former default).
        optimizer: wrapped optimizer.
        num_iterations: total training iterations.
        phase1_iterations: iterations of phase 1 (ignored by ``"poly"``).
        power: poly exponent.
        phase2_overlap: ``"two_phase_poly"`` only (see :func:`two_phase_poly_factor`); must be 0 for the others.
        epoch_length: ``"epoch_poly"`` only (:class:`EpochPolyLR`, required there): iterations per published epoch.

    Raises:
        ValueError: unknown name or bad numbers.
    """
    if name == "two_phase_poly":
        return TwoPhasePolyLR(
            optimizer, int(num_iterations), int(phase1_iterations), power, phase2_overlap=int(phase2_overlap)
        )
    if name == "poly":
        if phase2_overlap:
            raise ValueError("phase2_overlap needs lr_schedule 'two_phase_poly'")
        return PolynomialLR(optimizer, total_iters=int(num_iterations), power=power)
    if name == "epoch_poly":
        if phase2_overlap:
            raise ValueError("phase2_overlap needs lr_schedule 'two_phase_poly'")
        if epoch_length is None:
            raise ValueError("lr_schedule 'epoch_poly' needs epoch_length")
        return EpochPolyLR(optimizer, int(num_iterations), epoch_length, power)
    raise ValueError(f"unknown lr schedule {name!r}; use one of {LR_SCHEDULES}")
