"""RFNet (Ding, Yu & Yang, ICCV 2021) as a training method: its network and its published losses.

The published training step (dyh127/RFNet at ``1e475fa``, ``train.py:162-187``): the model gets the whole input
(the sequences dropped by the mask stay in the image; only features are masked) and returns the fused prediction,
one separate-decoder prediction per modality and the region maps of every level upsampled to full resolution;
each of them is scored by ``softmax_weighted_loss + dice_loss`` (:class:`~lckd_med.losses.SoftmaxSegLoss`) against
the one-hot four-class target, and

``loss = w * fuse + sum over the 4 modalities of sep + sum over the 4 levels of prm``,

with ``w = 0`` while ``epoch < region_fusion_start_epoch`` (20 in ``job.sh``) and 1 after. Here the trainer counts
iterations, so the threshold is :attr:`RFNetMethod.fusion_start_iteration` ``= region_fusion_start_epoch x
iter_per_epoch = 20 x 150 = 3000``: iterations 1..3000 (the published epochs 0..19) have ``w = 0``. As published,
the fused term is still computed (and logged) while its weight is 0.

Targets: this project's region label ``(B, 3, *S)`` becomes the published classes by
:func:`~lckd_med.losses.regions_to_classes` (label 4 -> class 3). The separate decoder runs on every modality
whatever the mask (published), also on a sequence a case does not have (its zero image). Shapes: image ``(B, 4,
*S)`` (modality order), logits ``(B, 4, *S)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from monai.networks.utils import one_hot

from lckd_med.losses.softmax_seg import SoftmaxSegLoss, regions_to_classes
from lckd_med.methods.base import TrainBatch, TrainingMethod
from lckd_med.networks.rfnet import RFNet
from lckd_med.utils.checks import non_negative_int

__all__ = ["AuxiliarySoftmaxMethod", "RFNetMethod", "PUBLISHED_PRESET", "RFNET_FUSION_START_ITERATION"]

#: The one network preset of RFNet and mmFormer: the published architecture (options override single values).
PUBLISHED_PRESET = "published"
#: ``region_fusion_start_epoch x iter_per_epoch`` of the published run (job.sh: 20 x 150).
RFNET_FUSION_START_ITERATION = 20 * 150


class AuxiliarySoftmaxMethod(TrainingMethod):
    """The loss shape RFNet and mmFormer share: ``w * L(fused) + sum L(per-modality) + sum L(auxiliary maps)``,
    ``L`` = :class:`~lckd_med.losses.SoftmaxSegLoss`, ``w = 0`` up to iteration ``fusion_start_iteration``.

    Subclasses set :attr:`network_class` and :meth:`outputs` (the network's training outputs as ``(fused logits,
    per-modality logits, auxiliary probabilities)``).

    Args:
        fusion_start_iteration: the fused term has weight 0 while the batch's iteration is at most this (iterations
            ``1 .. fusion_start_iteration``, and a batch outside a trainer, iteration 0); 0: always weight 1.

    Raises:
        ValueError: ``fusion_start_iteration`` is not an int >= 0.
    """

    presets: ClassVar[tuple[str, ...]] = (PUBLISHED_PRESET,)
    default_preset: ClassVar[str] = PUBLISHED_PRESET

    def __init__(self, fusion_start_iteration: int = 0) -> None:
        super().__init__()
        self.fusion_start_iteration = non_negative_int(fusion_start_iteration, "fusion_start_iteration")
        self.logit_loss = SoftmaxSegLoss(softmax=True)
        self.prob_loss = SoftmaxSegLoss(softmax=False)

    @classmethod
    def build_network(cls, preset: str = PUBLISHED_PRESET, **options: Any) -> torch.nn.Module:
        """The published network with ``options`` applied (those it does not take, and ``None`` values, ignored).

        Raises:
            ValueError: a preset other than ``"published"``, or a bad option value.
        """
        if preset not in cls.presets:
            raise ValueError(f"{cls.label} builds network preset {list(cls.presets)} only, got {preset!r}")
        accepted = set(inspect.signature(cls.network_class).parameters)
        return cls.network_class(**{k: v for k, v in options.items() if k in accepted and v is not None})

    def outputs(self, out: Any) -> tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor]]:
        """``(fused (B, R, *S) logits, per-modality (B, R, *S) logits, auxiliary (B, R, *S) probabilities)``."""
        raise NotImplementedError

    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        """``(loss, fused (B, R, *S) logits, {fuse_loss, sep_loss, aux_loss})`` (see the module docstring)."""
        out = self.network(batch.image, batch.mask, return_aux=True)
        fused, per_modality, auxiliary = self.outputs(out)
        target = one_hot(regions_to_classes(batch.label), fused.shape[1], dim=1, dtype=torch.float32)
        fuse = self.logit_loss(fused.float(), target)
        sep = torch.stack([self.logit_loss(p.float(), target) for p in per_modality]).sum()
        aux = torch.stack([self.prob_loss(p.float(), target) for p in auxiliary]).sum()
        off = bool(self.fusion_start_iteration) and batch.iteration <= self.fusion_start_iteration
        weight = 0.0 if off else 1.0
        loss = fuse * weight + sep + aux
        return loss, fused, {"fuse_loss": fuse, "sep_loss": sep, "aux_loss": aux}


class RFNetMethod(AuxiliarySoftmaxMethod):
    """RFNet: region-aware fusion; fused + separate-decoder + region-map softmax losses (fused from iteration
    3001 on, as published).

    Args:
        fusion_start_iteration: see :class:`AuxiliarySoftmaxMethod` (published: 3000, the module docstring).
    """

    label = "RFNet"
    network_class = RFNet

    def __init__(self, fusion_start_iteration: int = RFNET_FUSION_START_ITERATION) -> None:
        super().__init__(fusion_start_iteration)

    def outputs(self, out: Any) -> tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor]]:
        return out.logits, out.sep_logits, out.region_probs
