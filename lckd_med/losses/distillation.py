"""LCKD cross-modal knowledge distillation loss (teacher modalities -> the other present modalities).

For every sample, every elected teacher modality present in that sample, and every *other* modality present in
that sample, the distance between the detached teacher feature and the student feature. Default reduction
``"pair_sum"`` is the reference code's arithmetic (loss_Dual.py / DualNet.py): the SUM over (teacher, student) pairs
of an L1 whose mean runs over the batch and the feature elements. A pair absent from a sample adds 0 for it and the
batch mean still divides by the batch size, so when every sample has the same subset (the reference's per-batch
dropout) this is exactly the reference value. ``"mean"`` (average over (sample, teacher, student) pairs) is an option:
it keeps the KD scale independent of how many teachers and students are present, but makes the effective KD weight
1/2 to 1/6 of the reference's for the same ``kd_weight``. MONAI has no cross-modal / masked feature-distillation
loss, hence this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lckd_med.constants import MODALITIES, NUM_MODALITIES
from lckd_med.networks.fusion import check_mask

__all__ = ["KD_DISTANCES", "KD_REDUCTIONS", "CrossModalDistillationLoss", "teacher_mask"]

_DISTANCES = {"l1": F.l1_loss, "mse": F.mse_loss}
#: Feature distances of the distillation loss.
KD_DISTANCES: tuple[str, ...] = tuple(_DISTANCES)
#: ``"pair_sum"``: sum over (teacher, student) pairs of the batch-mean distance (reference, default);
#: ``"mean"``: mean over (sample, teacher, student) pairs; ``"sum"``: sum over (sample, teacher, student) pairs.
KD_REDUCTIONS: tuple[str, ...] = ("pair_sum", "mean", "sum")
_REDUCTIONS = KD_REDUCTIONS


def teacher_mask(
    teachers: torch.Tensor | np.ndarray | Sequence[str] | Sequence[bool], num_modalities: int
) -> torch.Tensor:
    """Teachers as a ``(num_modalities,)`` bool tensor in modality order.

    Args:
        teachers: a bool tensor/array of length ``num_modalities``, a sequence of bools, or a sequence of
            modality keys from :data:`~lckd_med.constants.MODALITIES` (only when ``num_modalities`` is 4).

    Raises:
        TypeError: unsupported type.
        ValueError: wrong length, unknown or repeated key.
    """
    if isinstance(teachers, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(teachers)
        if t.dtype != torch.bool:
            raise TypeError(f"teachers tensor must be bool, got {t.dtype}")
    elif isinstance(teachers, str):
        raise TypeError(f"teachers must be a sequence of modality keys, not one string {teachers!r}; wrap it in a list")
    elif isinstance(teachers, Sequence) and all(isinstance(v, (bool, np.bool_)) for v in teachers) and teachers:
        t = torch.tensor([bool(v) for v in teachers])
    elif isinstance(teachers, Sequence) and all(isinstance(v, str) for v in teachers):
        if num_modalities != NUM_MODALITIES:
            raise ValueError(
                f"teacher keys need {NUM_MODALITIES} modalities {MODALITIES}, features have {num_modalities}"
            )
        unknown = [v for v in teachers if v not in MODALITIES]
        if unknown or len(set(teachers)) != len(teachers):
            raise ValueError(f"teachers must be distinct keys from {MODALITIES}, got {list(teachers)}")
        t = torch.tensor([m in teachers for m in MODALITIES])
    else:
        raise TypeError(f"teachers must be a bool tensor or a sequence of modality keys, got {teachers!r}")
    if t.shape != (num_modalities,):
        raise ValueError(f"teachers must have shape ({num_modalities},), got {tuple(t.shape)}")
    return t


class CrossModalDistillationLoss(nn.Module):
    """Distance between detached teacher-modality features and every other present modality's features.

    With ``d[b, t, s] = distance(features[b, s], features[b, t].detach())`` over pairs with ``mask[b, t]``,
    ``teachers[t]``, ``mask[b, s]``, ``s != t`` (``distance`` = element mean of ``|.|``, ``"l1"``, LCKD's choice, or of
    ``(.)^2``, ``"mse"``):

    * ``"pair_sum"`` (reference, default): ``sum_{b,t,s} d[b, t, s] / B`` -- the sum over (teacher, student) pairs of
      a batch-mean L1;
    * ``"mean"``: ``sum d / number of (b, t, s) pairs``;
    * ``"sum"``: ``sum d``.

    With a list of levels the per-level losses are averaged.
    The loss is exactly 0 with zero gradient when no pair exists (no teacher present, or a teacher alone).
    The LCKD weight (0.1) is applied by the caller.

    Args:
        distance: ``"l1"`` or ``"mse"``.
        reduction: one of :data:`KD_REDUCTIONS` (default ``"pair_sum"``, the reference's).

    Raises:
        ValueError: unknown ``distance`` or ``reduction``.
    """

    def __init__(self, distance: str = "l1", reduction: str = "pair_sum") -> None:
        super().__init__()
        if distance not in _DISTANCES:
            raise ValueError(f"distance must be one of {sorted(_DISTANCES)}, got {distance!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
        self.distance = distance
        self.reduction = reduction

    def _level(self, features: torch.Tensor, mask: torch.Tensor, teachers: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() < 3:
            raise ValueError(f"features must be (B, M, C, *spatial), got {getattr(features, 'shape', features)}")
        batch, num_mod = features.shape[:2]
        mask = check_mask(mask, batch, num_mod, require_any=False).to(features.device)
        t_mask = teacher_mask(teachers, num_mod).to(features.device)
        dist_fn = _DISTANCES[self.distance]
        # an exact zero connected to the graph (gradient 0), NaN-safe whatever features hold
        total = torch.where(
            torch.zeros((), dtype=torch.bool, device=features.device), features[(0,) * features.dim()], 0.0
        )
        count = torch.zeros((), dtype=torch.float32, device=features.device)
        not_self = ~torch.eye(num_mod, dtype=torch.bool, device=features.device)
        for t in torch.nonzero(t_mask).flatten().tolist():  # teachers are few (1-2); loop keeps memory at M maps
            teacher = features[:, t : t + 1].detach()
            d = dist_fn(features, teacher.expand_as(features), reduction="none")
            d = d.flatten(2).mean(dim=2, dtype=torch.float32)  # (B, M), accumulated in float32
            pairs = mask[:, t : t + 1] & mask & not_self[t]
            total = total + torch.where(pairs, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum()
            count = count + pairs.sum()
        if self.reduction == "sum":
            return total
        if self.reduction == "pair_sum":
            return total / batch
        return total / count.clamp_min(1)  # no device sync; 0 / 1 when there is no pair

    def forward(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor,
        teachers: torch.Tensor | np.ndarray | Sequence[str] | Sequence[bool],
    ) -> torch.Tensor:
        """Distillation loss.

        Args:
            features: one level ``(B, M, C, *S)`` (modality order on dim 1), or a list of levels (averaged).
            mask: ``(B, M)`` bool availability (``(M,)`` broadcasts).
            teachers: ``(M,)`` bool, or modality keys such as ``["t1ce", "flair"]``.

        Returns:
            Scalar tensor.
        """
        if isinstance(features, torch.Tensor):
            return self._level(features, mask, teachers)
        if not isinstance(features, Sequence) or len(features) == 0:
            raise ValueError("features must be a tensor or a non-empty list of per-level tensors")
        return torch.stack([self._level(f, mask, teachers) for f in features]).mean()
