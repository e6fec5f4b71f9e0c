"""LCKD: segmentation + cross-modal distillation towards the elected teacher modalities (Wang et al., MICCAI 2023).

The method's own state is :class:`TeacherState`: the current teachers and the election record. The election itself
(single-modality validation Dice every ``interval`` iterations) is an engine handler,
:class:`lckd_med.engines.TeacherElectionHandler`, which updates the same :class:`TeacherState`; the checkpoint saves
it through :meth:`LCKDMethod.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lckd_med.losses.distillation import CrossModalDistillationLoss
from lckd_med.methods.base import TrainBatch, TrainingMethod, float_logits
from lckd_med.modalities import ModalitySpec, spec_of
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.reference_net import ReferenceLCKDNet

__all__ = ["TeacherState", "LCKDMethod"]


class TeacherState:
    """The current teachers and the election record, shared by the method and the election handler.

    Args:
        default: teacher modality keys used before the first election. Default: none (no distillation until the
            first election, which the reference runs after iteration 1); e.g. ``["t1ce"]`` builds in a prior.
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` whose modalities may teach (``None`` = BraTS);
            the election handler scores its single-modality subsets.

    Raises:
        ValueError: a default teacher that is not a modality key.
    """

    def __init__(self, default: Sequence[str] = (), modalities: ModalitySpec | Mapping[str, Any] | None = None) -> None:
        self.spec = spec_of(modalities)
        default = list(default)
        bad = [m for m in default if m not in self.spec.names]
        if bad:
            raise ValueError(f"default teachers {bad} are not modality keys {self.spec.names}")
        #: the teachers before the first election (modality order)
        self.default: tuple[str, ...] = tuple(m for m in self.spec.names if m in default)
        self.teachers: list[str] = list(self.default)
        self.history: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Back to the default teachers (the election record is kept): the reference's phase-2 run starts from its
        ``--teachers`` default again (``reset_teachers_at_phase_switch``, done by the election handler)."""
        self.teachers = list(self.default)

    def mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(M,)`` boolean teacher mask in modality order."""
        return torch.tensor([m in self.teachers for m in self.spec.names], dtype=torch.bool, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {"teachers": list(self.teachers), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teachers = [m for m in self.spec.names if m in state.get("teachers", [])] or self.teachers
        self.history = [dict(r) for r in state.get("history", [])]


class LCKDMethod(TrainingMethod):
    """``loss = seg(logits, label) + kd_weight * KD(features, mask, teachers)`` on the dropped-out input.

    Args:
        teacher_state: current teachers (updated by the election handler); ``None`` = a new one (BraTS, no teachers
            until the first election). Shown as ``teachers`` on progress lines; saved as the method's state.
        kd_loss: feature distillation loss ``(features per level, mask (B, M), teachers (M,)) -> scalar``;
            ``None`` = :class:`~lckd_med.losses.CrossModalDistillationLoss` (L1, summed over teacher-student pairs:
            the reference's).
        kd_weight: weight of the distillation term (0.1 in the paper; 0 gives plain modality dropout).
        kd_levels: encoder levels distilled (``-1`` = bottleneck).

    Raises:
        ValueError: ``kd_weight < 0`` or no ``kd_levels``.
    """

    label = "LCKD"
    network_class = LCKDNet
    #: ``network_preset reference`` builds the LCKD reference network instead
    other_networks = (ReferenceLCKDNet,)

    def __init__(
        self,
        teacher_state: TeacherState | None = None,
        kd_loss: Callable[..., torch.Tensor] | None = None,
        kd_weight: float = 0.1,
        kd_levels: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if not kd_levels:
            raise ValueError("kd_levels needs at least one level index")
        self.teacher_state = teacher_state if teacher_state is not None else TeacherState()
        self.kd_loss = kd_loss if kd_loss is not None else CrossModalDistillationLoss()
        self.kd_weight = float(kd_weight)
        self.kd_levels = [int(v) for v in kd_levels]

    def status(self) -> dict[str, str]:
        return {"teachers": "+".join(self.teacher_state.teachers)}

    def state_dict(self) -> dict[str, Any]:
        """``{"teachers": [...], "history": [election rows]}``."""
        return self.teacher_state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher_state.load_state_dict(state)

    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        logits, feats = self.network(batch.dropped_image, batch.mask, return_features=True)
        seg = self.seg_loss(float_logits(logits), batch.label).mean()
        if self.kd_weight > 0:
            levels = [feats[i].float() for i in self.kd_levels]
            kd = self.kd_loss(levels, batch.mask, self.teacher_state.mask(batch.image.device))
        else:
            kd = torch.zeros((), device=seg.device)
        return seg + self.kd_weight * kd, logits, {"seg_loss": seg, "kd_loss": kd}
