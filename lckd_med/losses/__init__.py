"""lckd_med.losses: segmentation (Dice + BCE; softmax weighted CE + Dice of RFNet/mmFormer), LCKD cross-modal
distillation, OMD adaptation (MMD, KL)."""

from __future__ import annotations

from lckd_med.losses.adaptation import FeatureMMDLoss, MultiKernelMMDLoss, TemperatureKLLoss, gaussian_mmd
from lckd_med.losses.distillation import CrossModalDistillationLoss, teacher_mask
from lckd_med.losses.segmentation import SEGMENTATION_LOSS_DEFAULTS, DiceBCELoss, segmentation_loss
from lckd_med.losses.softmax_seg import (
    SoftmaxSegLoss,
    regions_to_classes,
    soft_dice_loss,
    softmax_weighted_cross_entropy,
)

__all__ = [
    "CrossModalDistillationLoss",
    "teacher_mask",
    "DiceBCELoss",
    "segmentation_loss",
    "SEGMENTATION_LOSS_DEFAULTS",
    "gaussian_mmd",
    "MultiKernelMMDLoss",
    "FeatureMMDLoss",
    "TemperatureKLLoss",
    "SoftmaxSegLoss",
    "softmax_weighted_cross_entropy",
    "soft_dice_loss",
    "regions_to_classes",
]
