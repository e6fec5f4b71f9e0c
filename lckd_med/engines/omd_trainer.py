"""The one-stage modality distillation (OMD) training iteration as a MONAI ``SupervisedTrainer``.

One iteration, one optimizer, one stage (transfer and fusion learned together, as multi-task learning):

1. draw a modality dropout (per batch or per sample, as LCKD's phase 2); the dropped sequences stay in the input,
   since their real features are the restoration targets, but the prediction under the dropout mask never reads them;
2. one encoding and one decoder pass of ``2B`` samples (:meth:`lckd_med.networks.OMDNet.forward` with
   ``available``): the prediction from restored features (under the dropout mask) and the prediction from real
   features (under the availability mask), with the restored and the real feature maps;
3. ``loss = seg(restored path) + real_seg_weight * seg(real path) + mmd_weight * MMD(restored, real.detach())
   + kl_weight * T^2 KL(real path.detach() || restored path)``.

The iteration is :class:`lckd_med.engines.MethodTrainer`'s, with :class:`lckd_med.methods.OMDMethod` computing the
loss. No teacher election: the "teacher" is the model's own prediction from real features, in the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lckd_med.engines.trainer import MethodTrainer
from lckd_med.methods.omd import OMDMethod

__all__ = ["OMDTrainer", "omd_recipe_of"]


def omd_recipe_of(
    roi_size: Iterable[int],
    batch_size: int,
    num_iterations: int,
    phase1_iterations: int,
    optimizer: str,
    learning_rate: float,
    mmd_weight: float,
    kl_weight: float,
    kl_temperature: float,
    real_seg_weight: float,
    seed: int,
) -> dict[str, Any]:
    """The OMD training recipe as a JSON-able dict, stored in the checkpoint for the record."""
    return {
        "method": "omd",
        "roi_size": [int(v) for v in roi_size],
        "batch_size": int(batch_size),
        "num_iterations": int(num_iterations),
        "phase1_iterations": int(phase1_iterations),
        "optimizer": str(optimizer),
        "learning_rate": float(learning_rate),
        "mmd_weight": float(mmd_weight),
        "kl_weight": float(kl_weight),
        "kl_temperature": float(kl_temperature),
        "real_seg_weight": float(real_seg_weight),
        "seed": int(seed),
    }


class OMDTrainer(MethodTrainer):
    """:class:`MethodTrainer` running :class:`~lckd_med.methods.OMDMethod`: dropout -> two-path forward -> seg +
    adaptation losses -> one optimizer step.

    Args:
        mmd_loss, kl_loss, mmd_weight, kl_weight, real_seg_weight, mmd_levels: as
            :class:`~lckd_med.methods.OMDMethod` (keywords).
        phase1_iterations: iterations without dropout before it starts (0 = one stage from the first iteration;
            > 0 mimics LCKD's warm-up for ablations).
        kwargs: every other argument of :class:`MethodTrainer` (keywords), ``method`` excepted; ``network`` is an
            :class:`~lckd_med.networks.OMDNet` (bare or DDP-wrapped).

    Raises:
        TypeError: ``network`` is not an OMDNet, a weight is not a number.
        ValueError: a negative weight, ``phase1_iterations < 0``, bad ``mmd_levels``.
    """

    def __init__(
        self,
        *,
        mmd_loss: Callable[..., torch.Tensor] | None = None,
        kl_loss: Callable[..., torch.Tensor] | None = None,
        mmd_weight: float = 0.1,
        kl_weight: float = 1.0,
        real_seg_weight: float = 1.0,
        mmd_levels: Sequence[int] | None = None,
        phase1_iterations: int = 0,
        **kwargs: Any,
    ) -> None:
        method = OMDMethod(mmd_loss, kl_loss, mmd_weight, kl_weight, real_seg_weight, mmd_levels)
        super().__init__(method=method, phase1_iterations=phase1_iterations, **kwargs)
