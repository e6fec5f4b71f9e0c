"""The two baselines of :mod:`lckd_med.compare` as methods: LCKD's network and loss without distillation."""

from __future__ import annotations

from lckd_med.engines.election import TeacherState
from lckd_med.methods.lckd import LCKDMethod

__all__ = ["NoDistillationMethod", "FullModalityMethod"]


class NoDistillationMethod(LCKDMethod):
    """ "LCKD w/o KD": the LCKD network with modality dropout, segmentation loss only (no teachers, no election)."""

    def __init__(self) -> None:
        super().__init__(TeacherState(), kd_loss=None, kd_weight=0.0)

    def status(self) -> dict[str, str]:
        return {}


class FullModalityMethod(NoDistillationMethod):
    """ "All-4 only": the LCKD network trained on all sequences, never any modality dropout."""

    drops_modalities = False
