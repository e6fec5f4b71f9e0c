"""The LCKD training iteration as a MONAI ``SupervisedTrainer`` (ignite engine).

MONAI's ``SupervisedTrainer`` computes ``loss(pred, label)`` from one forward pass; LCKD also needs the
availability mask, the per-modality features and the current teachers, and a phase-dependent modality
dropout. The subclass keeps MONAI's engine, events and handlers and replaces only ``_iteration``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.transforms import Randomizable
from monai.utils import CommonKeys as Keys

from lckd_med.data.transforms import IMAGE_KEY, LABEL_KEY, MASK_KEY, ModalityDropout, drop_modalities_batch
from lckd_med.engines.election import TeacherState
from lckd_med.inference.sweep import autocast_context

__all__ = ["ModalityDropoutTrainer", "LCKDTrainer", "loss_terms", "seed_if_unseeded"]


def seed_if_unseeded(transform: Randomizable) -> None:
    """Seed a MONAI randomizable transform from torch's global generator unless the caller seeded it.

    MONAI's shared class-level ``RandomState`` is seeded from OS entropy and ``set_determinism`` does not reach
    it, so without this two seeded runs would draw different subsets. Ranks of a distributed run share the
    torch seed, hence the rank offset.
    """
    drawer = getattr(transform, "dropper", transform)  # ModalityDropoutd draws through its array twin
    if drawer.R is Randomizable.R:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        transform.set_random_state(seed=(int(torch.randint(0, 2**31 - 1, ()).item()) + rank) % 2**31)


def loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """Scalars of one iteration's output for ``StatsHandler``/``TensorBoardStatsHandler``."""
    return {k: float(output[k]) for k in ("loss", "seg_loss", "kd_loss") if k in output}


class ModalityDropoutTrainer(SupervisedTrainer):
    """What every lckd_med trainer shares: two phases (all sequences, then modality dropout),
    bf16 autocast on CUDA without a gradient scaler, and one batch-level output dict for the handlers.

    Subclasses implement ``_iteration``; :meth:`phase_of` tells which phase an iteration belongs to.

    Args:
        seg_loss: segmentation loss on logits ``(B, 3, *S)`` (passed to MONAI as ``loss_function``).
        dropout: the modality dropout of phase 2, drawn per batch or per sample as its ``granularity`` says; when
            not seeded by the caller it is seeded from torch's global generator here (so
            ``monai.utils.set_determinism`` makes phase 2 reproducible).
        phase1_iterations: iterations with all sequences before dropout starts (0: dropout from the start).
        amp: bf16 autocast on CUDA (no gradient scaler: bf16 keeps fp32's exponent range).
        Other arguments as in :class:`monai.engines.SupervisedTrainer`.
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
        phase1_iterations: int,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(phase1_iterations, bool) or not isinstance(phase1_iterations, int) or phase1_iterations < 0:
            raise ValueError(f"phase1_iterations must be an int >= 0, got {phase1_iterations!r}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=seg_loss,
            epoch_length=epoch_length,
            train_handlers=train_handlers,
            amp=False,  # autocast handled here: MONAI's amp path adds a GradScaler, useless with bf16
            decollate=False,  # handlers read the loss terms from one batch-level output dict
            **kwargs,
        )
        self.use_bf16 = amp
        self.dropout = dropout
        seed_if_unseeded(dropout)
        self.phase1_iterations = int(phase1_iterations)
        self.state.phase = 1 if self.phase1_iterations > 0 else 2

    def phase_of(self, iteration: int) -> int:
        """1 while all sequences are used (iterations ``<= phase1_iterations``), 2 (dropout) afterwards."""
        return 1 if iteration <= self.phase1_iterations else 2

    def unpack_batch(self, batchdata: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(image (B, 4, *S), region label (B, 3, *S), availability (B, 4) bool, phase)`` on the engine's device."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = self.state.device
        image = torch.as_tensor(batchdata[IMAGE_KEY]).to(device, non_blocking=self.non_blocking)
        label = torch.as_tensor(batchdata[LABEL_KEY]).to(device, non_blocking=self.non_blocking)
        mask = torch.as_tensor(batchdata[MASK_KEY]).to(device, dtype=torch.bool)
        return image, label, mask, self.phase_of(self.state.iteration)


class LCKDTrainer(ModalityDropoutTrainer):
    """One iteration = (phase 2: modality dropout) -> forward with features -> Dice+BCE + w * KD -> step.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, train_handlers: as in
            :class:`monai.engines.SupervisedTrainer`. Batches carry ``image`` ``(B, 4, *S)`` (modality order),
            region ``label`` ``(B, 3, *S)`` (ET, TC, WT) and ``modality_mask`` ``(B, 4)``.
        seg_loss: segmentation loss on logits ``(B, 3, *S)`` (``lckd_med.losses.segmentation_loss()``: Dice + BCE).
        kd_loss: feature distillation loss ``(features, mask, teachers) -> scalar``; ``None`` disables KD.
        kd_weight: weight of the distillation term (0.1 in the paper; 0 gives plain modality dropout).
        kd_levels: encoder levels distilled (``-1`` = bottleneck).
        teacher_state: shared current teachers (updated by the election handler).
        phase1_iterations: iterations with all modalities before modality dropout starts.
        dropout: the modality dropout of phase 2, drawn per batch or per sample as its ``granularity`` says; when
            not seeded by the caller it is seeded from torch's global generator here (so
            ``monai.utils.set_determinism`` makes phase 2 reproducible).
        amp: bf16 autocast on CUDA (no gradient scaler: bf16 keeps fp32's exponent range).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher_state: TeacherState,
        dropout: ModalityDropout,
        phase1_iterations: int,
        kd_loss: Callable[..., torch.Tensor] | None = None,
        kd_weight: float = 0.1,
        kd_levels: Sequence[int] = (-1,),
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = True,
        **kwargs: Any,
    ) -> None:
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if not kd_levels:
            raise ValueError("kd_levels needs at least one level index")
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
        self.kd_loss = kd_loss
        self.kd_weight = float(kd_weight)
        self.kd_levels = [int(v) for v in kd_levels]
        self.teacher_state = teacher_state
        self.state.teachers = "+".join(teacher_state.teachers)

    def _iteration(self, engine: LCKDTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        device = engine.state.device
        image, label, mask, phase = self.unpack_batch(batchdata)
        if phase == 2:
            image, mask = drop_modalities_batch(image, mask, self.dropout)
        engine.state.phase = phase
        engine.state.teachers = "+".join(self.teacher_state.teachers)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(device, self.use_bf16):
            logits, feats = engine.network(image, mask, return_features=True)
            engine.state.output[Keys.PRED] = logits
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            seg = engine.loss_function(logits.float(), label).mean()
            if self.kd_loss is not None and self.kd_weight > 0:
                levels = [feats[i].float() for i in self.kd_levels]
                kd = self.kd_loss(levels, mask, self.teacher_state.mask(device))
            else:
                kd = torch.zeros((), device=seg.device)
            loss = seg + self.kd_weight * kd
        engine.state.output.update({Keys.LOSS: loss, "seg_loss": seg.detach(), "kd_loss": kd.detach()})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
