"""The one training engine: a MONAI ``SupervisedTrainer`` that runs any :mod:`lckd_med.methods` method.

MONAI's ``SupervisedTrainer`` computes ``loss(pred, label)`` from one forward pass; missing-modality methods also
need the availability mask, a phase-dependent modality dropout and their own loss terms. :class:`MethodTrainer`
keeps MONAI's engine, events and handlers and replaces only ``_iteration``, which asks the method for
``(loss, prediction, terms)``. Every method runs on it (``method=build_method(name, ...)``).
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
from lckd_med.engines.progress import loss_terms
from lckd_med.methods.base import TrainBatch, TrainingMethod
from lckd_med.prediction import autocast_context

__all__ = ["MethodTrainer", "loss_terms", "seed_if_unseeded"]


def seed_if_unseeded(transform: Randomizable) -> None:
    """Seed a MONAI randomizable transform from torch's global generator unless the caller seeded it.

    MONAI's shared class-level ``RandomState`` is seeded from OS entropy and ``set_determinism`` does not reach
    it, so without this two seeded runs would draw different subsets. Ranks of a distributed run share the
    torch seed, hence the rank offset.
    """
    if transform.R is Randomizable.R:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        transform.set_random_state(seed=(int(torch.randint(0, 2**31 - 1, ()).item()) + rank) % 2**31)


class MethodTrainer(SupervisedTrainer):
    """One iteration = (phase 2: modality dropout) -> ``method.compute_loss`` under bf16 autocast -> one step.

    The same for every method: two phases (all sequences, then modality dropout; a method with
    ``drops_modalities = False`` stays in phase 1), bf16 autocast on CUDA without a gradient scaler, and one
    batch-level output dict holding ``loss`` and the method's ``terms`` (detached) for the handlers
    (:func:`~lckd_med.engines.progress.loss_terms`). The method's :meth:`~lckd_med.methods.TrainingMethod.status`
    entries are set on ``engine.state`` (names in ``engine.state.status_keys``) before every iteration.

    Batches carry ``image`` ``(B, 4, *S)`` (modality order), region ``label`` ``(B, 3, *S)`` (ET, TC, WT) and
    ``modality_mask`` ``(B, 4)``.

    Args:
        method: the training method (:func:`lckd_med.methods.build_method`), bound here to ``network`` and
            ``seg_loss``; the checkpoint handler saves its state.
        seg_loss: segmentation loss on logits ``(B, 3, *S)`` (passed to MONAI as ``loss_function``).
        dropout: the modality dropout of phase 2, drawn per batch or per sample as its ``granularity`` says; when
            not seeded by the caller it is seeded from torch's global generator here (so
            ``monai.utils.set_determinism`` makes phase 2 reproducible).
        phase1_iterations: iterations with all sequences before dropout starts (0: dropout from the start).
        amp: bf16 autocast on CUDA (no gradient scaler: bf16 keeps fp32's exponent range).
        Other arguments as in :class:`monai.engines.SupervisedTrainer`.

    Raises:
        TypeError: a method, network (see :meth:`~lckd_med.methods.TrainingMethod.bind`) or dropout of the wrong
            type.
        ValueError: ``phase1_iterations < 0``.
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
        method: TrainingMethod,
        phase1_iterations: int = 0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, TrainingMethod):
            raise TypeError(f"method must be a lckd_med.methods.TrainingMethod, got {type(method).__name__}")
        if not isinstance(dropout, ModalityDropout):
            raise TypeError(f"dropout must be a lckd_med.data.transforms.ModalityDropout, got {type(dropout).__name__}")
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
        self.method = method
        method.bind(network, seg_loss)
        self.state.phase = self.phase_of(1)
        self._show_status(self)

    def phase_of(self, iteration: int) -> int:
        """1 while all sequences are used (iterations ``<= phase1_iterations``), 2 (dropout) afterwards."""
        return 1 if iteration <= self.phase1_iterations or not self.method.drops_modalities else 2

    def _show_status(self, engine: MethodTrainer) -> None:
        status = self.method.status()
        for key, value in status.items():
            setattr(engine.state, key, value)
        engine.state.status_keys = tuple(status)

    def unpack_batch(self, batchdata: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(image (B, 4, *S), region label (B, 3, *S), availability (B, 4) bool, phase)`` on the engine's device."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = self.state.device
        image = torch.as_tensor(batchdata[IMAGE_KEY]).to(device, non_blocking=self.non_blocking)
        label = torch.as_tensor(batchdata[LABEL_KEY]).to(device, non_blocking=self.non_blocking)
        mask = torch.as_tensor(batchdata[MASK_KEY]).to(device, dtype=torch.bool)
        return image, label, mask, self.phase_of(self.state.iteration)

    def _iteration(self, engine: MethodTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        image, label, available, phase = self.unpack_batch(batchdata)
        dropped, mask = image, available
        if phase == 2:
            dropped, mask = drop_modalities_batch(image, available, self.dropout)
        batch = TrainBatch(image, dropped, label, available, mask, int(engine.state.iteration))
        engine.state.phase = phase
        self._show_status(engine)
        engine.state.output = {Keys.IMAGE: dropped, Keys.LABEL: label}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine.state.device, self.use_bf16):
            loss, pred, terms = self.method.compute_loss(batch, phase)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output.update({Keys.LOSS: loss, **{k: v.detach() for k, v in terms.items()}})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
