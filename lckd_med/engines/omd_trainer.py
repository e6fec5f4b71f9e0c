"""The one-stage modality distillation (OMD) training iteration as a MONAI ``SupervisedTrainer``.

One iteration, one optimizer, one stage (transfer and fusion learned together, as multi-task learning):

1. draw a modality dropout (per batch or per sample, as LCKD's phase 2); the dropped sequences stay in the input,
   since their real features are the restoration targets, but the prediction under the dropout mask never reads them;
2. one encoding and one decoder pass of ``2B`` samples (:meth:`lckd_med.networks.OMDNet.forward` with
   ``available``): the prediction from restored features (under the dropout mask) and the prediction from real
   features (under the availability mask), with the restored and the real feature maps;
3. ``loss = seg(restored path) + real_seg_weight * seg(real path) + mmd_weight * MMD(restored, real.detach())
   + kl_weight * T^2 KL(real path.detach() || restored path)``.

MONAI's ``SupervisedTrainer`` computes ``loss(pred, label)`` from one forward pass; the subclass keeps MONAI's
engine, events and handlers and replaces only ``_iteration`` (as :class:`lckd_med.engines.LCKDTrainer` does).
No teacher election: the "teacher" is the model's own prediction from real features, in the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from lckd_med.data.transforms import (
    ModalityDropout,
    ModalityDropoutd,
    drop_modalities_batch,
)
from lckd_med.engines.checkpoint import unwrap_model
from lckd_med.engines.trainer import ModalityDropoutTrainer
from lckd_med.inference.sweep import autocast_context
from lckd_med.losses.adaptation import FeatureMMDLoss, TemperatureKLLoss
from lckd_med.networks.omd_net import OMDNet

__all__ = ["OMDTrainer", "omd_loss_terms", "omd_recipe_of", "OMD_LOSS_KEYS"]

#: Scalars of one OMD iteration's output (``kd_loss`` = the weighted adaptation terms, shown by ProgressHandler).
OMD_LOSS_KEYS: tuple[str, ...] = ("loss", "seg_loss", "seg_real_loss", "mmd_loss", "kl_loss", "kd_loss")


def omd_loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """Scalars of one iteration's output for ``StatsHandler``/``TensorBoardStatsHandler``."""
    return {k: float(output[k]) for k in OMD_LOSS_KEYS if k in output}


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


def _weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _full_res(logits: Any) -> torch.Tensor:
    """Full-resolution logits of a plain or deep-supervision output."""
    return logits[0] if isinstance(logits, (list, tuple)) else logits


def _float(logits: Any) -> Any:
    return [t.float() for t in logits] if isinstance(logits, (list, tuple)) else logits.float()


def _rows(logits: Any, idx: torch.Tensor) -> Any:
    return [t[idx] for t in logits] if isinstance(logits, (list, tuple)) else logits[idx]


class OMDTrainer(ModalityDropoutTrainer):
    """One iteration = modality dropout -> two-path forward -> seg + adaptation losses -> one optimizer step.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, train_handlers: as in
            :class:`monai.engines.SupervisedTrainer`; ``network`` is an :class:`~lckd_med.networks.OMDNet` (bare or
            wrapped in DistributedDataParallel). Batches carry ``image`` ``(B, 4, *S)`` (modality order), region
            ``label`` ``(B, 3, *S)`` (ET, TC, WT) and ``modality_mask`` ``(B, 4)``.
        seg_loss: segmentation loss on logits ``(B, 3, *S)`` (``lckd_med.losses.segmentation_loss()``).
        dropout: the modality dropout, per batch or per sample as its ``granularity`` says
            (``ModalityDropout(prob=1, max_kept=3)`` drops at least one sequence of every complete sample); when not seeded by the caller it is seeded from torch's global
            generator (so ``monai.utils.set_determinism`` makes the draws reproducible).
        mmd_loss: marginal adaptation term; ``None`` = :class:`~lckd_med.losses.FeatureMMDLoss` defaults.
        kl_loss: conditional adaptation term; ``None`` = :class:`~lckd_med.losses.TemperatureKLLoss` (``T = 2``).
        mmd_weight: weight of the MMD term (0 disables it).
        kl_weight: weight of the KL term (0 disables it).
        real_seg_weight: weight of the segmentation loss of the prediction from real features (the in-step
            teacher; 0 trains it only through the shared layers).
        mmd_levels: encoder levels whose restorations enter the MMD (``None`` = all; ``-1`` = bottleneck).
        phase1_iterations: iterations without dropout before it starts (0 = one stage from the first iteration;
            > 0 mimics LCKD's warm-up for ablations).
        amp: bf16 autocast on CUDA (no gradient scaler: bf16 keeps fp32's exponent range).

    Raises:
        TypeError: ``network`` is not an OMDNet, a weight is not a number.
        ValueError: a negative weight, ``phase1_iterations < 0``, bad ``mmd_levels``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        dropout: ModalityDropout,
        mmd_loss: Callable[..., torch.Tensor] | None = None,
        kl_loss: Callable[..., torch.Tensor] | None = None,
        mmd_weight: float = 0.1,
        kl_weight: float = 1.0,
        real_seg_weight: float = 1.0,
        mmd_levels: Sequence[int] | None = None,
        phase1_iterations: int = 0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = True,
        **kwargs: Any,
    ) -> None:
        bare = unwrap_model(network)
        if not isinstance(bare, OMDNet):
            raise TypeError(f"OMDTrainer needs an OMDNet (possibly DDP-wrapped), got {type(bare).__name__}")
        self.mmd_weight = _weight(mmd_weight, "mmd_weight")
        self.kl_weight = _weight(kl_weight, "kl_weight")
        self.real_seg_weight = _weight(real_seg_weight, "real_seg_weight")
        if mmd_levels is None:
            levels = list(range(bare.num_levels))
        else:
            if isinstance(mmd_levels, (str, bytes)) or not isinstance(mmd_levels, Sequence) or not mmd_levels:
                raise ValueError(f"mmd_levels must be None or a non-empty list of level indices, got {mmd_levels!r}")
            bad = [v for v in mmd_levels if isinstance(v, bool) or not isinstance(v, int)]
            bad += [v for v in mmd_levels if isinstance(v, int) and not -bare.num_levels <= v < bare.num_levels]
            if bad:
                raise ValueError(
                    f"mmd_levels {list(mmd_levels)} has invalid entries {bad}; the network has {bare.num_levels} levels"
                )
            levels = sorted({int(v) % bare.num_levels for v in mmd_levels})
        if not isinstance(dropout, (ModalityDropout, ModalityDropoutd)):
            raise TypeError(f"dropout must be a lckd_med.data.transforms.ModalityDropout, got {type(dropout).__name__}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            seg_loss=seg_loss,
            dropout=dropout,
            phase1_iterations=phase1_iterations,
            epoch_length=epoch_length,
            train_handlers=train_handlers,
            amp=amp,
            **kwargs,
        )
        self.mmd_loss = mmd_loss if mmd_loss is not None else FeatureMMDLoss()
        self.kl_loss = kl_loss if kl_loss is not None else TemperatureKLLoss()
        self.mmd_levels = levels
        self.state.teachers = ""  # no teacher election in OMD (ProgressHandler prints "-")

    def _iteration(self, engine: OMDTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        device = engine.state.device
        image, label, available, phase = self.unpack_batch(batchdata)
        mask = available
        if phase == 2:
            # the zeroed image is discarded: the dropped channels' real features are the restoration targets
            _, mask = drop_modalities_batch(image, available, self.dropout)
        engine.state.phase = phase
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(device, self.use_bf16):
            out = engine.network(image, mask, available=available)
            engine.state.output[Keys.PRED] = out.logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            seg = engine.loss_function(_float(out.logits), label).mean()
            zero = torch.zeros((), device=seg.device)
            seg_real, mmd, kl = zero, zero, zero
            has_drop = out.dropped.any(dim=1)
            if bool(has_drop.any()):
                idx = torch.nonzero(has_drop).flatten()
                if self.real_seg_weight > 0:
                    seg_real = engine.loss_function(_float(_rows(out.logits_real, idx)), label[idx]).mean()
                if self.mmd_weight > 0:
                    restored = [out.restored[i].float() for i in self.mmd_levels]
                    real = [out.real[i].float() for i in self.mmd_levels]
                    mmd = self.mmd_loss(restored, real, out.dropped)
                if self.kl_weight > 0:
                    kl = self.kl_loss(_full_res(out.logits), _full_res(out.logits_real), has_drop)
            adaptation = self.mmd_weight * mmd + self.kl_weight * kl
            loss = seg + self.real_seg_weight * seg_real + adaptation
        engine.state.output.update(
            {
                Keys.LOSS: loss,
                "seg_loss": seg.detach(),
                "seg_real_loss": seg_real.detach(),
                "mmd_loss": mmd.detach(),
                "kl_loss": kl.detach(),
                "kd_loss": adaptation.detach(),
            }
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
