"""Joint distribution adaptation losses of one-stage modality distillation (OMD, arXiv 2309.08204).

* Marginal term: multi-kernel Gaussian maximum mean discrepancy (MMD) between restored and real features
  (:class:`MultiKernelMMDLoss` on samples, :class:`FeatureMMDLoss` on per-modality feature maps).
* Conditional term: temperature-scaled KL divergence between the prediction from restored features and the
  (detached) prediction from real features (:class:`TemperatureKLLoss`, ``T = 2`` by default, times ``T^2``).

MONAI has neither an MMD loss nor a distillation KL for independent sigmoid channels, hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from lckd_med.networks.fusion import check_mask

__all__ = ["gaussian_mmd", "MultiKernelMMDLoss", "FeatureMMDLoss", "TemperatureKLLoss"]

_ACTIVATIONS = ("sigmoid", "softmax")


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_positive_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def gaussian_mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    kernel_num: int = 5,
    kernel_mul: float = 2.0,
    bandwidth: float | None = None,
) -> torch.Tensor:
    """Biased (V-statistic) squared MMD with a mixture of Gaussian kernels, averaged over the kernels.

    ``k(a, b) = mean_i exp(-|a - b|^2 / (sigma^2 * kernel_mul^(i - kernel_num // 2)))``, ``i = 0..kernel_num-1``;
    ``sigma^2`` is ``bandwidth`` or, when ``None``, the mean squared distance between distinct points of the pooled
    sample (detached, the usual median-like heuristic). The result is ``mean K_ss + mean K_tt - 2 mean K_st``, which
    is ``>= 0``, exactly ``0`` for identical samples and at most ``2``.

    Args:
        source: ``(N, D)`` samples.
        target: ``(N', D)`` samples.

    Returns:
        Scalar tensor (float32 or float64, as the inputs).
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            f"source and target must be (N, D) with the same D, got {tuple(source.shape)}, {tuple(target.shape)}"
        )
    if source.shape[0] == 0 or target.shape[0] == 0:
        raise ValueError("source and target need at least one sample each")
    n = source.shape[0]
    pooled = torch.cat([source, target], dim=0)
    dist2 = torch.cdist(pooled, pooled).pow(2)
    if bandwidth is None:
        total = pooled.shape[0]
        base = dist2.detach().sum() / max(total * total - total, 1)
        base = torch.where(base > 0, base, torch.ones_like(base))  # all points equal: any scale gives MMD 0
    else:
        base = torch.as_tensor(float(bandwidth), dtype=dist2.dtype, device=dist2.device)
    kernels = torch.zeros_like(dist2)
    for i in range(kernel_num):
        kernels = kernels + torch.exp(-dist2 / (base * kernel_mul ** (i - kernel_num // 2)))
    kernels = kernels / kernel_num
    k_ss = kernels[:n, :n].mean()
    k_tt = kernels[n:, n:].mean()
    k_st = kernels[:n, n:].mean()
    return (k_ss + k_tt - 2 * k_st).clamp_min(0)


class MultiKernelMMDLoss(nn.Module):
    """Multi-kernel Gaussian MMD between two sets of samples (see :func:`gaussian_mmd`).

    Args:
        kernel_num: number of Gaussian kernels (>= 1).
        kernel_mul: ratio between consecutive kernel bandwidths (> 0; 2 as in DAN).
        bandwidth: fixed base bandwidth ``sigma^2`` (> 0), or ``None`` for the data-driven one.
        max_samples: at most this many samples of each set enter the ``O(N^2)`` kernel matrix; larger sets are
            subsampled at random (torch's global RNG, so ``set_determinism`` makes it reproducible).

    Raises:
        ValueError / TypeError: a bad argument.
    """

    def __init__(
        self, kernel_num: int = 5, kernel_mul: float = 2.0, bandwidth: float | None = None, max_samples: int = 512
    ) -> None:
        super().__init__()
        self.kernel_num = _check_positive_int(kernel_num, "kernel_num")
        self.kernel_mul = _check_positive_real(kernel_mul, "kernel_mul")
        self.bandwidth = None if bandwidth is None else _check_positive_real(bandwidth, "bandwidth")
        self.max_samples = _check_positive_int(max_samples, "max_samples")

    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.max_samples:
            return x
        idx = torch.randperm(x.shape[0], device=x.device)[: self.max_samples]
        return x[idx]

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Squared MMD of ``(N, D)`` ``source`` and ``(N', D)`` ``target`` samples (computed in float32)."""
        source = self._subsample(source.float())
        target = self._subsample(target.float())
        return gaussian_mmd(source, target, self.kernel_num, self.kernel_mul, self.bandwidth)


class FeatureMMDLoss(nn.Module):
    """MMD between restored and real feature maps of the modalities that were dropped on purpose.

    For every level and every modality ``m`` dropped in at least one sample, the voxels' feature vectors
    (``C``-dimensional) of the restored maps and of the detached real maps of those samples are the two sample
    sets; the same random voxels (at most ``max_samples``) are taken from both. The loss averages the per-modality
    MMDs, then the levels. It is an exact zero, connected to the graph, when nothing was dropped.

    Args:
        kernel_num, kernel_mul, bandwidth, max_samples: see :class:`MultiKernelMMDLoss`.
    """

    def __init__(
        self, kernel_num: int = 5, kernel_mul: float = 2.0, bandwidth: float | None = None, max_samples: int = 512
    ) -> None:
        super().__init__()
        self.mmd = MultiKernelMMDLoss(kernel_num, kernel_mul, bandwidth, max_samples)

    def _level(self, restored: torch.Tensor, real: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        if restored.shape != real.shape or restored.dim() < 3:
            raise ValueError(
                f"restored and real must be (B, M, C, *spatial) of one shape, got {tuple(restored.shape)} and "
                f"{tuple(real.shape)}"
            )
        batch, num_mod, channels = restored.shape[:3]
        dropped = check_mask(dropped, batch, num_mod, require_any=False).to(restored.device)
        real = real.detach()  # real features are targets
        terms = []
        for m in torch.nonzero(dropped.any(dim=0)).flatten().tolist():
            rows = torch.nonzero(dropped[:, m]).flatten()
            src = restored[rows, m].flatten(2).transpose(1, 2).reshape(-1, channels)  # (n_voxels, C)
            tgt = real[rows, m].flatten(2).transpose(1, 2).reshape(-1, channels)
            if src.shape[0] > self.mmd.max_samples:
                idx = torch.randperm(src.shape[0], device=src.device)[: self.mmd.max_samples]
                src, tgt = src[idx], tgt[idx]
            terms.append(self.mmd(src, tgt))
        if not terms:
            return restored.sum() * 0.0
        return torch.stack(terms).mean()

    def forward(
        self,
        restored: torch.Tensor | Sequence[torch.Tensor],
        real: torch.Tensor | Sequence[torch.Tensor],
        dropped: torch.Tensor,
    ) -> torch.Tensor:
        """MMD loss.

        Args:
            restored: ``(B, M, C, *S)`` features with restorations in the dropped slots, or a list of levels.
            real: the encoder's features, same layout (detached here).
            dropped: ``(B, M)`` bool, ``True`` where a modality was available but dropped.

        Returns:
            Scalar tensor.
        """
        if isinstance(restored, torch.Tensor) and isinstance(real, torch.Tensor):
            return self._level(restored, real, dropped)
        if (
            isinstance(restored, torch.Tensor)
            or isinstance(real, torch.Tensor)
            or len(restored) == 0
            or len(restored) != len(real)
        ):
            raise ValueError("restored and real must both be tensors or non-empty lists of the same length")
        return torch.stack([self._level(r, t, dropped) for r, t in zip(restored, real, strict=True)]).mean()


class TemperatureKLLoss(nn.Module):
    """``T^2 * KL(teacher_T || student_T)`` between predictions softened by a temperature ``T``.

    ``"sigmoid"`` (the region channels ET, TC, WT are independent sigmoids): a Bernoulli KL per channel and voxel,
    ``p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q))`` with ``p = sigmoid(teacher / T)``,
    ``q = sigmoid(student / T)``, computed from log-sigmoids so it is exactly 0 for equal logits; averaged over
    channels and voxels. ``"softmax"``: the categorical KL over the channel dim, averaged over voxels. The
    teacher is detached. With ``sample_mask``, only the selected samples count (0 when none is selected).

    Args:
        temperature: ``T > 0`` (2 by default, as the paper's authors use for this term).
        activation: ``"sigmoid"`` or ``"softmax"``.

    Raises:
        ValueError / TypeError: a bad argument.
    """

    def __init__(self, temperature: float = 2.0, activation: str = "sigmoid") -> None:
        super().__init__()
        self.temperature = _check_positive_real(temperature, "temperature")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, sample_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """KL loss of ``(B, C, *S)`` student logits against ``(B, C, *S)`` teacher logits (float32 inside).

        Args:
            student: logits from restored features.
            teacher: logits from real features (detached here).
            sample_mask: optional ``(B,)`` bool selecting the samples that count.

        Returns:
            Scalar tensor.
        """
        if student.shape != teacher.shape or student.dim() < 2:
            raise ValueError(
                f"student and teacher must be (B, C, *spatial) of one shape, got {tuple(student.shape)} and "
                f"{tuple(teacher.shape)}"
            )
        t = self.temperature
        s = student.float() / t
        p_logits = teacher.detach().float() / t
        if self.activation == "sigmoid":
            p = torch.sigmoid(p_logits)
            kl = p * (F.logsigmoid(p_logits) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-p_logits) - F.logsigmoid(-s))
            per_sample = kl.flatten(1).mean(dim=1)
        else:
            log_p = F.log_softmax(p_logits, dim=1)
            kl = (log_p.exp() * (log_p - F.log_softmax(s, dim=1))).sum(dim=1)
            per_sample = kl.flatten(1).mean(dim=1)
        per_sample = per_sample * (t * t)
        if sample_mask is None:
            return per_sample.mean()
        if not isinstance(sample_mask, torch.Tensor) or sample_mask.dtype != torch.bool:
            raise TypeError("sample_mask must be a torch.bool tensor")
        if sample_mask.shape != per_sample.shape:
            raise ValueError(f"sample_mask must have shape {tuple(per_sample.shape)}, got {tuple(sample_mask.shape)}")
        sample_mask = sample_mask.to(per_sample.device)
        total = torch.where(sample_mask, per_sample, torch.zeros((), device=per_sample.device)).sum()
        return total / sample_mask.sum().clamp_min(1)
