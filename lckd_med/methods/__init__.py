"""lckd_med.methods: missing-modality training methods as small strategy objects run by one trainer.

A method = one module here (its network, ``compute_loss(batch, phase) -> (loss, prediction, terms)`` and its own
``state_dict``; :class:`~lckd_med.methods.base.TrainingMethod`) + one line in :data:`METHODS`
(``registry.py``), which every runner iterates. See ``docs/methods.md``.
"""

from __future__ import annotations

from lckd_med.methods.base import SegmentationMethod, TrainBatch, TrainingMethod, float_logits
from lckd_med.methods.baselines import FullModalityMethod, NoDistillationMethod
from lckd_med.methods.lckd import LCKDMethod, TeacherState
from lckd_med.methods.omd import OMDMethod
from lckd_med.methods.registry import (
    METHODS,
    build_method,
    build_network,
    get_method,
    method_name,
    method_parameters,
    network_class,
    network_classes,
    network_name,
)

__all__ = [
    "TrainBatch",
    "TrainingMethod",
    "SegmentationMethod",
    "float_logits",
    "TeacherState",
    "LCKDMethod",
    "OMDMethod",
    "NoDistillationMethod",
    "FullModalityMethod",
    "METHODS",
    "get_method",
    "method_name",
    "method_parameters",
    "build_method",
    "build_network",
    "network_class",
    "network_classes",
    "network_name",
]
