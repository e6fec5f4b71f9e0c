"""OMD, one-stage modality distillation: seg on the restored path + seg on the real path + MMD + KL.

``loss = seg(restored path) + real_seg_weight * seg(real path) + mmd_weight * MMD(restored, real.detach())
+ kl_weight * T^2 KL(real path.detach() || restored path)``; the dropped sequences stay in the input (their real
features are the restoration targets) and the prediction under the dropout mask never reads them. See
:mod:`lckd_med.networks.omd_net` and ``docs/omd.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import torch

from lckd_med.losses.adaptation import FeatureMMDLoss, TemperatureKLLoss
from lckd_med.methods.base import TrainBatch, TrainingMethod, float_logits
from lckd_med.networks.omd_net import OMDNet

__all__ = ["OMDMethod"]


def _weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _full_res(logits: Any) -> torch.Tensor:
    """Full-resolution logits of a plain or deep-supervision output."""
    return logits[0] if isinstance(logits, (list, tuple)) else logits


def _rows(logits: Any, idx: torch.Tensor) -> Any:
    return [t[idx] for t in logits] if isinstance(logits, (list, tuple)) else logits[idx]


class OMDMethod(TrainingMethod):
    """Restoration + shared cross translation trained in one stage (trains an :class:`~lckd_med.networks.OMDNet`).

    Args:
        mmd_loss: marginal adaptation term; ``None`` = :class:`~lckd_med.losses.FeatureMMDLoss` defaults.
        kl_loss: conditional adaptation term; ``None`` = :class:`~lckd_med.losses.TemperatureKLLoss` (``T = 2``).
        mmd_weight: weight of the MMD term (0 disables it).
        kl_weight: weight of the KL term (0 disables it).
        real_seg_weight: weight of the segmentation loss of the prediction from real features (the in-step
            teacher; 0 trains it only through the shared layers).
        mmd_levels: encoder levels whose restorations enter the MMD (``None`` = every level the network restores,
            see its ``restore_levels``; ``-1`` = bottleneck).

    Raises:
        TypeError: a weight is not a number; :meth:`bind` with a network that is not an OMDNet.
        ValueError: a negative weight, bad ``mmd_levels`` (at :meth:`bind`: a level the network does not restore).
    """

    label = "OMD"
    network_class = OMDNet

    def __init__(
        self,
        mmd_loss: Callable[..., torch.Tensor] | None = None,
        kl_loss: Callable[..., torch.Tensor] | None = None,
        mmd_weight: float = 0.1,
        kl_weight: float = 1.0,
        real_seg_weight: float = 1.0,
        mmd_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.mmd_weight = _weight(mmd_weight, "mmd_weight")
        self.kl_weight = _weight(kl_weight, "kl_weight")
        self.real_seg_weight = _weight(real_seg_weight, "real_seg_weight")
        if mmd_levels is not None and (
            isinstance(mmd_levels, (str, bytes)) or not isinstance(mmd_levels, Sequence) or not mmd_levels
        ):
            raise ValueError(f"mmd_levels must be None or a non-empty list of level indices, got {mmd_levels!r}")
        self._mmd_levels_arg = mmd_levels
        self.mmd_levels: list[int] = []
        self.mmd_loss = mmd_loss if mmd_loss is not None else FeatureMMDLoss()
        self.kl_loss = kl_loss if kl_loss is not None else TemperatureKLLoss()

    def bind(self, network: torch.nn.Module, seg_loss: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        super().bind(network, seg_loss)  # checks the network class
        bare = network.module if hasattr(network, "module") else network
        num_levels, restored = bare.num_levels, bare.fusions.restored_levels
        if self._mmd_levels_arg is None:
            self.mmd_levels = list(restored)
        else:
            given = self._mmd_levels_arg
            bad = [v for v in given if isinstance(v, bool) or not isinstance(v, int)]
            bad += [v for v in given if isinstance(v, int) and not -num_levels <= v < num_levels]
            if bad:
                raise ValueError(
                    f"mmd_levels {list(given)} has invalid entries {bad}; the network has {num_levels} levels"
                )
            self.mmd_levels = sorted({int(v) % num_levels for v in given})
            if set(self.mmd_levels) - set(restored):
                raise ValueError(
                    f"mmd_levels {list(given)} names levels the network does not restore (restore_levels "
                    f"{bare.restore_levels!r} restores {restored})"
                )

    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        out = self.network(batch.image, batch.mask, available=batch.available)
        label = batch.label
        seg = self.seg_loss(float_logits(out.logits), label).mean()
        zero = torch.zeros((), device=seg.device)
        seg_real, mmd, kl = zero, zero, zero
        has_drop = out.dropped.any(dim=1)
        if bool(has_drop.any()):
            idx = torch.nonzero(has_drop).flatten()
            if self.real_seg_weight > 0:
                seg_real = self.seg_loss(float_logits(_rows(out.logits_real, idx)), label[idx]).mean()
            if self.mmd_weight > 0:
                restored = [out.restored[i].float() for i in self.mmd_levels]
                real = [out.real[i].float() for i in self.mmd_levels]
                mmd = self.mmd_loss(restored, real, out.dropped)
            if self.kl_weight > 0:
                kl = self.kl_loss(_full_res(out.logits), _full_res(out.logits_real), has_drop)
        adaptation = self.mmd_weight * mmd + self.kl_weight * kl
        loss = seg + self.real_seg_weight * seg_real + adaptation
        terms = {
            "seg_loss": seg,
            "seg_real_loss": seg_real,
            "mmd_loss": mmd,
            "kl_loss": kl,
            "adaptation_loss": adaptation,
        }
        return loss, out.logits, terms
