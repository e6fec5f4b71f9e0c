"""LCKD: segmentation + cross-modal distillation towards the elected teacher modalities (Wang et al., MICCAI 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lckd_med.engines.election import TeacherState
from lckd_med.methods.base import TrainBatch, TrainingMethod

__all__ = ["LCKDMethod"]


class LCKDMethod(TrainingMethod):
    """``loss = seg(logits, label) + kd_weight * KD(features, mask, teachers)`` on the dropped-out input.

    Args:
        teacher_state: current teachers (updated by the election handler); shown as ``teachers`` on progress lines.
        kd_loss: feature distillation loss ``(features per level, mask (B, M), teachers (M,)) -> scalar``;
            ``None`` disables KD.
        kd_weight: weight of the distillation term (0.1 in the paper; 0 gives plain modality dropout).
        kd_levels: encoder levels distilled (``-1`` = bottleneck).

    Raises:
        ValueError: ``kd_weight < 0`` or no ``kd_levels``.
    """

    def __init__(
        self,
        teacher_state: TeacherState,
        kd_loss: Callable[..., torch.Tensor] | None = None,
        kd_weight: float = 0.1,
        kd_levels: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if not kd_levels:
            raise ValueError("kd_levels needs at least one level index")
        self.teacher_state = teacher_state
        self.kd_loss = kd_loss
        self.kd_weight = float(kd_weight)
        self.kd_levels = [int(v) for v in kd_levels]

    def status(self) -> dict[str, str]:
        return {"teachers": "+".join(self.teacher_state.teachers)}

    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        logits, feats = self.network(batch.dropped_image, batch.mask, return_features=True)
        seg = self.seg_loss(logits.float(), batch.label).mean()
        if self.kd_loss is not None and self.kd_weight > 0:
            levels = [feats[i].float() for i in self.kd_levels]
            kd = self.kd_loss(levels, batch.mask, self.teacher_state.mask(batch.image.device))
        else:
            kd = torch.zeros((), device=seg.device)
        return seg + self.kd_weight * kd, logits, {"seg_loss": seg, "kd_loss": kd}
