"""Softmax segmentation loss of RFNet and mmFormer: frequency-weighted cross-entropy + soft Dice over classes.

Both published codes train with the same two criterions (``utils/criterions.py`` of dyh127/RFNet at ``1e475fa`` and
of YaoZhang93/mmFormer), on softmax **probabilities** ``(B, C, *S)`` and one-hot targets of the same shape:

* :func:`softmax_weighted_cross_entropy` (``softmax_weighted_loss``, criterions.py:23-36): class ``c`` of sample
  ``b`` is weighted ``1 - n_bc / n_b`` (its share of the sample's voxels, so rare classes weigh more); the
  probabilities are clamped to ``[0.005, 1]`` before the log (no gradient below 0.005); the weighted negative log
  likelihoods are summed over classes and averaged over the batch and voxels.
* :func:`soft_dice_loss` (``dice_loss``, criterions.py:11-21): per class ``2 sum(p t) / (sum p + sum t + 1e-7)``
  summed over the whole batch and all voxels, averaged over the classes (background included), subtracted from 1.

The Dice term is MONAI's :class:`~monai.losses.DiceLoss` (``batch=True``, ``smooth_nr=0``, ``smooth_dr=1e-7``,
background included), equal to the published function (tested). The cross-entropy term is written here: MONAI's and
PyTorch's weighted cross-entropy take one weight per class for the whole batch and divide by the summed weights,
and neither clamps the probabilities; the published weights are per sample and the clamp removes the gradient of
confidently wrong voxels, which changes training.
"""

from __future__ import annotations

from numbers import Real

import torch
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from torch.nn.modules.loss import _Loss

from lckd_med.constants import NUM_REGIONS, REGIONS

__all__ = [
    "SoftmaxSegLoss",
    "softmax_weighted_cross_entropy",
    "soft_dice_loss",
    "regions_to_classes",
    "PROB_CLAMP_MIN",
    "DICE_EPS",
]

#: Lower clamp of the probabilities inside the log (criterions.py:32).
PROB_CLAMP_MIN = 0.005
#: Added to the Dice denominator (criterions.py:11).
DICE_EPS = 1e-7


def _check_pair(probs: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() < 3 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"predictions must be (B, C>=2, *S), got {shape}")
    if not isinstance(target, torch.Tensor) or target.shape != probs.shape:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"one-hot target must have the predictions' shape {tuple(probs.shape)}, got {shape}")


def softmax_weighted_cross_entropy(
    probs: torch.Tensor, target: torch.Tensor, clamp_min: float = PROB_CLAMP_MIN
) -> torch.Tensor:
    """Per-sample class-frequency weighted cross-entropy on probabilities (see the module docstring).

    Args:
        probs: ``(B, C, *S)`` class probabilities (softmax over dim 1).
        target: ``(B, C, *S)`` one-hot target.
        clamp_min: probabilities are clamped to ``[clamp_min, 1]`` inside the log.

    Returns:
        Scalar loss: ``mean over (b, voxels) of -sum_c (1 - n_bc / n_b) t log(clamp(p))``.
    """
    _check_pair(probs, target)
    target = target.to(probs.dtype)
    counts = target.flatten(2).sum(dim=2)  # (B, C)
    weights = 1.0 - counts / counts.sum(dim=1, keepdim=True)
    log_p = torch.log(probs.clamp(min=clamp_min, max=1.0))
    weighted = weights.view(*weights.shape, *([1] * (probs.dim() - 2))) * target * log_p
    return -weighted.sum(dim=1).mean()


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """``1 -`` mean over classes of the batch-wide soft Dice (MONAI ``DiceLoss``, see the module docstring).

    Args:
        probs: ``(B, C, *S)`` class probabilities.
        target: ``(B, C, *S)`` one-hot target.
        eps: added to each class's denominator.
    """
    _check_pair(probs, target)
    dice = DiceLoss(include_background=True, batch=True, smooth_nr=0.0, smooth_dr=eps, reduction="mean")
    return dice(probs, target.to(probs.dtype))


def regions_to_classes(regions: torch.Tensor) -> torch.Tensor:
    """This project's region targets as the published softmax classes: ``(B, 3, *S)`` binary ET, TC, WT
    (:data:`~lckd_med.constants.REGIONS` order) -> ``(B, 1, *S)`` int64 class indices, 0 background, 1 NCR/NET,
    2 ED, 3 ET (BraTS label 4, or 3 from 2023; the published ``seg[seg == 4] = 3``).

    The regions nest (ET in TC in WT), so: ET -> 3; TC outside ET -> 1 (NCR/NET); WT outside TC -> 2 (ED); else 0:
    the channel order of a ``"classes"`` network output (:data:`lckd_med.networks.outputs.CLASS_NAMES`), whose
    :func:`~lckd_med.networks.outputs.region_probabilities` is the inverse. The one place where training targets of
    RFNet and mmFormer are made.

    Raises:
        ValueError: not a ``(B, 3, *S)`` tensor.
    """
    if not isinstance(regions, torch.Tensor) or regions.dim() < 3 or regions.shape[1] != NUM_REGIONS:
        shape = tuple(regions.shape) if isinstance(regions, torch.Tensor) else type(regions).__name__
        raise ValueError(f"region targets must be (B, {NUM_REGIONS}, *S) in the order {REGIONS}, got {shape}")
    inside = regions > 0.5
    et, tc, wt = (inside[:, REGIONS.index(r)] for r in ("ET", "TC", "WT"))
    classes = torch.where(et, 3, torch.where(tc, 1, torch.where(wt, 2, 0)))
    return classes.unsqueeze(1).long()


def _check_nonnegative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value) >= 0.0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


class SoftmaxSegLoss(_Loss):
    """``lambda_ce *`` :func:`softmax_weighted_cross_entropy` ``+ lambda_dice *`` :func:`soft_dice_loss`, the loss
    RFNet and mmFormer apply to each of their outputs (with both weights 1, train.py:166-168 of RFNet).

    Args:
        softmax: the predictions are logits (softmax over dim 1 is applied); ``False``: they are probabilities
            already (the published region maps, upsampled probabilities).
        clamp_min: lower clamp of the probabilities in the log, in ``(0, 1)``.
        dice_eps: added to the Dice denominators, ``> 0``.
        lambda_ce: weight of the cross-entropy term, ``>= 0``.
        lambda_dice: weight of the Dice term, ``>= 0``.

    ``forward(pred, target)``: ``pred`` ``(B, C, *S)``; ``target`` one-hot ``(B, C, *S)`` or class indices
    ``(B, 1, *S)`` in ``0 .. C-1`` (BraTS: label 4 given as class 3). Returns a scalar.

    Raises:
        ValueError: an invalid argument.
    """

    def __init__(
        self,
        *,
        softmax: bool = True,
        clamp_min: float = PROB_CLAMP_MIN,
        dice_eps: float = DICE_EPS,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(softmax, bool):
            raise ValueError(f"softmax must be a bool, got {softmax!r}")
        if isinstance(clamp_min, bool) or not isinstance(clamp_min, Real) or not 0.0 < float(clamp_min) < 1.0:
            raise ValueError(f"clamp_min must be in (0, 1), got {clamp_min!r}")
        if isinstance(dice_eps, bool) or not isinstance(dice_eps, Real) or not float(dice_eps) > 0.0:
            raise ValueError(f"dice_eps must be a positive number, got {dice_eps!r}")
        self.softmax = softmax
        self.clamp_min = float(clamp_min)
        self.dice_eps = float(dice_eps)
        self.lambda_ce = _check_nonnegative(lambda_ce, "lambda_ce")
        self.lambda_dice = _check_nonnegative(lambda_dice, "lambda_dice")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(pred, torch.Tensor) or pred.dim() < 3 or pred.shape[1] < 2:
            shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(f"predictions must be (B, C>=2, *S), got {shape}")
        if isinstance(target, torch.Tensor) and target.dim() == pred.dim() and target.shape[1] == 1:
            if target.shape[0] != pred.shape[0] or target.shape[2:] != pred.shape[2:]:
                raise ValueError(
                    f"class-index target must be (B, 1, *S) = {(pred.shape[0], 1, *pred.shape[2:])}, got {tuple(target.shape)}"
                )
            if target.is_floating_point() and not bool((target == target.round()).all()):
                raise ValueError("class-index target must hold integers")
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= pred.shape[1]:
                raise ValueError(f"class-index target must be in 0..{pred.shape[1] - 1}, got values {low}..{high}")
            target = one_hot(target.long(), pred.shape[1], dim=1, dtype=pred.dtype)
        probs = torch.softmax(pred, dim=1) if self.softmax else pred
        loss = probs.new_zeros(())
        if self.lambda_ce:
            loss = loss + self.lambda_ce * softmax_weighted_cross_entropy(probs, target, self.clamp_min)
        if self.lambda_dice:
            loss = loss + self.lambda_dice * soft_dice_loss(probs, target, self.dice_eps)
        return loss
