"""Segmentation loss: soft Dice + BCE on the three region channels (ET, TC, WT).

Why not ``monai.losses.DiceCELoss(sigmoid=True)``: with more than one channel its cross-entropy term is the
*softmax* ``nn.CrossEntropyLoss`` (``sigmoid`` only affects the Dice term; BCE is used only for one channel).
The ET, TC, WT channels are nested, independent sigmoids -- a voxel of ET has target ``(1, 1, 1)`` -- so softmax CE
is the wrong loss for them (checked in MONAI 1.6.1: it equals Dice + ``F.cross_entropy``). :class:`DiceBCELoss`
pairs MONAI's ``DiceLoss`` with ``BCEWithLogitsLoss`` instead.

Term arithmetic of the LCKD reference (loss_Dual.py): soft Dice averaged over the 3 region channels + the SUM of the
3 per-channel BCEs (each a mean over the batch and voxels). ``bce_reduction="sum_channels"`` (default) reproduces that;
``"mean"`` (one BCE mean over channels too, 1/3 of the reference's) is an option that weighs Dice and BCE equally.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["BCE_REDUCTIONS", "DiceBCELoss", "segmentation_loss", "SEGMENTATION_LOSS_DEFAULTS"]

#: ``"sum_channels"``: sum over region channels of each channel's mean BCE (reference, default); ``"mean"``: one mean.
BCE_REDUCTIONS: tuple[str, ...] = ("sum_channels", "mean")

#: Defaults of :func:`segmentation_loss` (MONAI ``DiceLoss`` arguments). Chosen as MONAI's BraTS recipe, except
#: ``squared_pred=False`` (plain soft Dice, as nnU-Net): ``smooth_nr=0`` so a sample whose region is empty adds a
#: constant, gradient-free Dice term (false positives there are the BCE term's job) instead of the steep
#: ``smooth/(sum p + smooth)`` gradient; ``batch=False`` computes Dice per sample, like the per-case metric.
SEGMENTATION_LOSS_DEFAULTS: dict[str, Any] = {
    "smooth_nr": 0.0,
    "smooth_dr": 1e-5,
    "squared_pred": False,
    "batch": False,
}

# Settings that would break the (B, 3) independent-sigmoid region layout (channel 0 is ET, not background).
_FIXED = {"sigmoid": True, "softmax": False, "to_onehot_y": False, "include_background": True, "other_act": None}


class DiceBCELoss(_Loss):
    """``lambda_dice * DiceLoss(sigmoid) + lambda_bce * BCE`` on independent channels.

    Args:
        lambda_dice: weight of the MONAI soft Dice term (``>= 0``; Dice is averaged over channels).
        lambda_bce: weight of the binary cross-entropy term (``>= 0``).
        bce_reduction: ``"sum_channels"`` (sum over channels of per-channel mean BCEs, the LCKD reference's, default)
            or ``"mean"`` (mean over channels and voxels).
        pos_weight: optional ``BCEWithLogitsLoss`` positive-class weight, one per channel.
        **dice_kwargs: further ``monai.losses.DiceLoss`` arguments.

    Input ``(B, C, H, W, D)`` logits; target of the same shape, 0/1 (bool or float).

    Raises:
        ValueError: a negative weight.
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        pos_weight: torch.Tensor | None = None,
        bce_reduction: str = "sum_channels",
        **dice_kwargs: Any,
    ) -> None:
        super().__init__()
        if bce_reduction not in BCE_REDUCTIONS:
            raise ValueError(f"bce_reduction must be one of {BCE_REDUCTIONS}, got {bce_reduction!r}")
        self.bce_reduction = bce_reduction
        for name, value in (("lambda_dice", lambda_dice), ("lambda_bce", lambda_bce)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.lambda_dice = float(lambda_dice)
        self.lambda_bce = float(lambda_bce)
        self.dice = DiceLoss(**dice_kwargs)
        if pos_weight is not None:
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, C, *S)`` logits against a ``(B, C, *S)`` binary target."""
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same shape")
        target = target.to(input.dtype)
        if self.bce.pos_weight is None:
            bce = self.bce(input, target)
        else:  # one weight per channel, broadcast over any number of spatial axes (2-D or 3-D)
            weight = self.bce.pos_weight.view(-1, *([1] * (input.dim() - 2)))
            bce = nn.functional.binary_cross_entropy_with_logits(input, target, pos_weight=weight)
        if self.bce_reduction == "sum_channels":
            # every channel has the same number of elements: the overall mean x C = the sum of per-channel means
            bce = bce * input.shape[1]
        return self.lambda_dice * self.dice(input, target) + self.lambda_bce * bce


def segmentation_loss(**kwargs: Any) -> DiceBCELoss:
    """Soft Dice + BCE for the ``(B, 3)`` ET, TC, WT sigmoid logits, with :data:`SEGMENTATION_LOSS_DEFAULTS`.

    Args:
        **kwargs: ``DiceBCELoss`` / ``monai.losses.DiceLoss`` arguments overriding the defaults (e.g.
            ``batch=True``, ``lambda_bce=0.5``, ``bce_reduction="mean"``).

    Raises:
        ValueError: an argument that contradicts independent sigmoid region channels (``softmax=True``,
            ``sigmoid=False``, ``to_onehot_y=True``, ``include_background=False``, ``other_act``).
    """
    for key, fixed in _FIXED.items():
        if key in kwargs and kwargs[key] != fixed:
            raise ValueError(
                f"segmentation_loss needs {key}={fixed!r} (independent sigmoid region channels), got {kwargs[key]!r}"
            )
    return DiceBCELoss(**{**SEGMENTATION_LOSS_DEFAULTS, **_FIXED, **kwargs})
