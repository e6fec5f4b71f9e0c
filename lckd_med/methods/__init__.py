"""lckd_med.methods: missing-modality training methods as small strategy objects run by one trainer.

A method = its network choice, its extra losses and ``compute_loss(batch, phase) -> (loss, prediction, terms)``
(:class:`~lckd_med.methods.base.TrainingMethod`); :data:`METHODS` maps a name to a method class.
"""

from __future__ import annotations

from lckd_med.methods.base import TrainBatch, TrainingMethod, float_logits
from lckd_med.methods.baselines import FullModalityMethod, NoDistillationMethod
from lckd_med.methods.lckd import LCKDMethod
from lckd_med.methods.omd import OMDMethod
from lckd_med.methods.registry import METHODS, build_method, get_method

__all__ = [
    "TrainBatch",
    "TrainingMethod",
    "float_logits",
    "LCKDMethod",
    "OMDMethod",
    "NoDistillationMethod",
    "FullModalityMethod",
    "METHODS",
    "get_method",
    "build_method",
]
