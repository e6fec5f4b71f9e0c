"""Ignite handler that saves the self-describing ``model.pt`` and resumes training from it.

MONAI's ``CheckpointSaver`` names files by ignite's conventions and stores only ``state_dict`` objects; the
product needs one fixed ``<ckpt_dir>/model.pt`` that also carries what rebuilds the network (the registered method
and network names, the network hyper-parameters), the label convention and the training method's own state
(whatever :meth:`lckd_med.methods.TrainingMethod.state_dict` returns, e.g. LCKD's teachers and election record),
loadable with ``weights_only=True``. Hence this handler. It knows no method by name: it reads the method from the
trainer (:class:`~lckd_med.engines.MethodTrainer`'s ``method``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from lckd_med.constants import REGIONS
from lckd_med.constants import label_convention as _convention
from lckd_med.data.stream import stream_sampler_of
from lckd_med.engines.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    check_network_spec,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
    weights_hash,
)
from lckd_med.methods.registry import method_name, network_name
from lckd_med.modalities import ModalitySpec, spec_of

__all__ = ["TrainingCheckpointHandler", "TrainingInterrupted", "CHECKPOINT_NAME"]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPT_EXIT_CODE = 130

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def grad_params(net: torch.nn.Module) -> list[str]:
    """Names of the parameters that hold a ``.grad`` tensor (zeroed or not) rather than ``None``.

    Part of the training state that ``state_dict`` does not carry: the trainer zeroes gradients in place
    (``zero_grad(set_to_none=False)``, MONAI's default), so a parameter that once had a gradient keeps a zero
    ``.grad`` in iterations where it takes no part (the encoder of a dropped sequence in phase 2), and SGD momentum,
    Adam moments and weight decay still move it; a ``None`` gradient makes the optimiser skip it. A resumed run must
    start with the same parameters holding a gradient, or its first phase-2 step differs from the uninterrupted run's.
    """
    return [name for name, p in net.named_parameters() if p.grad is not None]


def restore_grad_params(net: torch.nn.Module, names: Sequence[str] | None) -> None:
    """Give the parameters named in ``names`` (from :func:`grad_params`) a zero ``.grad``, as they had when saved.

    ``None`` (a checkpoint written before this was recorded) leaves the gradients alone.
    """
    if names is None:
        return
    wanted = set(names)
    for name, p in net.named_parameters():
        if name in wanted and p.grad is None:
            p.grad = torch.zeros_like(p)


class TrainingInterrupted(Exception):
    """Raised after the checkpoint was saved on Ctrl-C; turned into one line and exit status 130."""


class TrainingCheckpointHandler:
    """Save ``<ckpt_dir>/model.pt`` every ``save_every`` epochs, at the end and on Ctrl-C; resume from it at start.

    A resumed run continues at the saved iteration (mid-epoch after Ctrl-C) with the same weights, optimizer,
    scheduler, phase, method state (LCKD's teachers), global and modality-dropout RNG states and, when the loader is
    fed by a :class:`lckd_med.data.stream.StreamSampler`, the same position in the data stream -- so it ends bit for bit
    where the uninterrupted run ends. The RNG states are restored just before the first batch is drawn (after the
    loader's iterator is built), the point at which the uninterrupted run saved them.

    Ctrl-C (SIGINT, single-process runs) lets the current iteration finish, saves before the next batch, and exits with one line and
    status 130; a second Ctrl-C stops at once without saving.

    The checkpoint names the trainer's method (its registered name) and network (its registered class name) and
    holds the method's :meth:`~lckd_med.methods.TrainingMethod.state_dict` as ``method_state``.

    Args:
        ckpt_dir: folder of ``model.pt``.
        scheduler: learning-rate scheduler to save and restore (optional).
        label_convention: ``"brats2018"``/``"brats2023"`` or a release year.
        train_config: JSON-able recipe stored for the record.
        save_every: epochs between saves (>= 1).
        resume: load ``model.pt`` at start when it exists (a finished run is not re-run).
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` stored in the checkpoint (``modality_spec``);
            ``None`` = the spec of the trainer's modality dropout. It must match the network's channels and dims.
        inference: inference defaults stored as the checkpoint's ``inference`` (window ``roi_size``, ``overlap``,
            ``average``, ``mode``, ``decision``; checked where a checkpoint is loaded for inference,
            :func:`lckd_med.inference.segmenter.checkpoint_inference`), e.g. RFNet's and mmFormer's published
            sliding window; ``None`` = none recorded (the bundles' own defaults apply).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        scheduler: Any = None,
        label_convention: str | int = "brats2018",
        train_config: Mapping[str, Any] | None = None,
        save_every: int = 1,
        resume: bool = True,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
        inference: Mapping[str, Any] | None = None,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1 epoch, got {save_every}")
        self.path = Path(ckpt_dir) / CHECKPOINT_NAME
        self._modalities = None if modalities is None else spec_of(modalities)
        self.spec = self._modalities if self._modalities is not None else spec_of(None)
        self.scheduler = scheduler
        self.label_convention = _convention(label_convention).name
        self.train_config = dict(train_config or {})
        if inference is not None and not isinstance(inference, Mapping):
            raise TypeError(f"inference must be a mapping or None, got {type(inference).__name__}")
        self.inference = None if inference is None else dict(inference)
        self.save_every = int(save_every)
        self.resume = resume
        self._pending_rng: Mapping[str, Any] | None = None
        self._interrupted = False
        self._exiting = False
        self._previous_sigint: Any = None

    def attach(self, engine: Engine) -> None:
        """Attach to a :class:`~lckd_med.engines.MethodTrainer` (its ``method`` and ``dropout`` are read when it
        starts)."""
        engine.add_event_handler(Events.STARTED, self._check_spec)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._restore_rng)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        engine.add_event_handler(Events.STARTED, self._install_sigint)
        # before the next batch rather than at ITERATION_COMPLETED: every handler of the finished iteration (the
        # learning-rate step among them) has run, as at an epoch-end save
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._save_if_interrupted)
        engine.add_event_handler(Events.COMPLETED, self._restore_sigint)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _check_spec(self, engine: Engine) -> None:
        """The spec stored in the checkpoint: ``modalities``, else the trainer's modality dropout's.

        Raises:
            ValueError: ``modalities`` differs from the spec of the trainer's modality dropout.
        """
        dropout_spec = getattr(getattr(engine, "dropout", None), "spec", None)
        if self._modalities is None:
            self.spec = dropout_spec if dropout_spec is not None else self.spec
        elif dropout_spec is not None:
            self._modalities.check_same(dropout_spec, "the checkpoint handler", "the trainer's modality dropout")

    # -- Ctrl-C -----------------------------------------------------------------------------------------------
    def _install_sigint(self, engine: Engine) -> None:
        """Catch the first Ctrl-C so the current iteration ends cleanly and is saved (not under torchrun: ranks
        receive the signal at different iterations and would wait for each other forever)."""
        if _distributed() or threading.current_thread() is not threading.main_thread():
            return
        self._interrupted = False
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._interrupted = True
        print(
            "\ninterrupt received: finishing this iteration and saving a checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore_sigint(self, engine: Engine | None = None) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _save_if_interrupted(self, engine: Engine) -> None:
        if self._interrupted:
            self.save(engine)
            engine.logger.setLevel(logging.CRITICAL)  # ignite would log the stop as an error, twice
            raise TrainingInterrupted(
                f"interrupted at iteration {engine.state.iteration}: saved {self.path}; "
                "run the same command again to resume"
            )

    def _on_exception(self, engine: Engine, e: BaseException) -> None:
        """One line instead of tracebacks for Ctrl-C; other errors go on to the next handler (or are raised)."""
        self._restore_sigint()
        if isinstance(e, SystemExit) and self._exiting:  # ignite hands our exit to its outer handler once more
            raise e
        if isinstance(e, (TrainingInterrupted, KeyboardInterrupt)):
            self._exiting = True
            engine.logger.setLevel(logging.CRITICAL)
        if isinstance(e, TrainingInterrupted):
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPT_EXIT_CODE) from None
        if isinstance(e, KeyboardInterrupt):
            print(
                f"error: stopped by a second Ctrl-C without saving; the last checkpoint is {self.path} "
                "(run the same command again to resume from it)",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(INTERRUPT_EXIT_CODE) from None
        handlers = engine._event_handlers.get(Events.EXCEPTION_RAISED, [])
        if not any(h[0] != self._on_exception for h in handlers):  # nobody else will re-raise it
            raise e

    @staticmethod
    def _generators(engine: Engine) -> dict[str, Any]:
        """The trainer's modality-dropout generator (its draws are not covered by the global RNGs)."""
        dropout = getattr(engine, "dropout", None)
        return {"modality_dropout": dropout.R} if dropout is not None and hasattr(dropout, "R") else {}

    def payload(self, engine: Engine) -> dict[str, Any]:
        net = unwrap_model(engine.network)
        hparams = getattr(net, "hparams", None)
        if hparams is None:
            raise TypeError(f"{type(net).__name__} has no hparams; the checkpoint could not rebuild it")
        check_network_spec(hparams, self.spec, type(net).__name__)
        out: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "method": method_name(engine.method),
            "network": {"name": network_name(net), "hparams": dict(hparams)},
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "modalities": list(self.spec.names),
            "modality_spec": self.spec.to_dict(),
            "regions": list(REGIONS),
            "label_convention": self.label_convention,
            "method_state": engine.method.state_dict(),
            "iteration": int(engine.state.iteration),
            # completed epochs (after Ctrl-C the current one is not)
            "epoch": int(engine.state.iteration) // int(engine.state.epoch_length or 1)
            if engine.state.epoch_length
            else int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs or 0),
            "epoch_length": int(engine.state.epoch_length or 0),
            "phase": int(getattr(engine.state, "phase", 1)),
            "optimizer": engine.optimizer.state_dict(),
            "rng": rng_state(self._generators(engine)),
            "grad_params": grad_params(net),
            "train_config": self.train_config,
        }
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        if self.inference is not None:
            out["inference"] = self.inference
        return out

    def save(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        # a checkpoint resumed with the same epoch count must not overwrite the evaluation's stored results
        previous = {}
        if self.path.is_file():
            try:
                previous = load_checkpoint(self.path, modalities=self.spec)
            except ValueError:
                previous = {}
        payload = self.payload(engine)
        # the stored scores belong to the weights they were measured with: same content hash, not same iteration
        if "subset_dice" in previous and previous.get("weights_sha256") == weights_hash(payload["model"]):
            payload["subset_dice"] = previous["subset_dice"]
        save_checkpoint(self.path, payload)
        logger.info("saved %s (iteration %d, epoch %d)", self.path, payload["iteration"], payload["epoch"])

    def load(self, engine: Engine) -> None:
        if not self.path.is_file():
            return
        ckpt = load_checkpoint(self.path, map_location="cpu", modalities=self.spec)
        lacking = [k for k in ("optimizer", "iteration") if k not in ckpt]
        if lacking:
            origin = (
                f"imported from {ckpt['imported_from']}" if ckpt.get("imported_from") else "not written by training"
            )
            raise ValueError(
                f"{self.path} is an inference checkpoint ({origin}; it lacks {', '.join(lacking)}): training cannot "
                "resume from it; choose another ckpt_dir, or pass --resume False to train from scratch over it"
            )
        net = unwrap_model(engine.network)
        name = network_name(net)
        if ckpt.get("network", {}).get("name") != name:
            raise ValueError(f"{self.path} holds a {ckpt['network'].get('name')} network, not {name}")
        if ckpt.get("method") != method_name(engine.method):
            raise ValueError(
                f"{self.path} was trained with method {ckpt.get('method')!r}, the config runs "
                f"{method_name(engine.method)!r}; use another ckpt_dir or the same method to resume"
            )
        if "method_state" not in ckpt:
            raise ValueError(
                f"{self.path} was written by lckd_med 0.3.0 or earlier: it loads for evaluation and inference, not "
                "for resuming training; use another ckpt_dir"
            )
        saved = ckpt["network"]["hparams"]
        complete = getattr(type(net), "complete_hparams", None)
        if (complete(saved) if complete is not None else dict(saved)) != dict(net.hparams):
            raise ValueError(
                f"{self.path} was trained with network {ckpt['network']['hparams']}, the config builds "
                f"{net.hparams}; use another ckpt_dir or the same network settings to resume"
            )
        net.load_state_dict(ckpt["model"])
        restore_grad_params(net, ckpt.get("grad_params"))
        if "optimizer" in ckpt:
            engine.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and "scheduler" in ckpt:
            self._load_scheduler(ckpt["scheduler"])
        engine.method.load_state_dict(ckpt["method_state"])
        # restored right before the first batch, after the loader's iterator has drawn its own seeds
        self._pending_rng = ckpt.get("rng")
        epoch_length = int(engine.state.epoch_length or 0)
        iteration = int(ckpt.get("iteration", int(ckpt["epoch"]) * epoch_length))
        epoch = iteration // epoch_length if epoch_length else int(ckpt["epoch"])
        max_epochs = int(engine.state.max_epochs or 0)
        if epoch >= max_epochs:
            logger.info("%s is already trained to epoch %d (%d asked); nothing to resume", self.path, epoch, max_epochs)
        # not clipped to max_epochs: a shorter rerun trains nothing and must not re-save the model as less trained;
        # a mid-epoch iteration (Ctrl-C) makes ignite finish that epoch first
        engine.state.epoch = epoch
        engine.state.iteration = iteration
        engine.state.phase = int(ckpt.get("phase", 1))
        sampler = stream_sampler_of(getattr(engine, "data_loader", None))
        if sampler is not None:
            sampler.set_start(iteration * int(engine.data_loader.batch_size or 1))
        logger.info(
            "resumed from %s at iteration %d (epoch %d, phase %d%s)",
            self.path,
            engine.state.iteration,
            engine.state.epoch,
            engine.state.phase,
            "".join(f", {k} {v or '-'}" for k, v in engine.method.status().items()),
        )

    def _restore_rng(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, self._generators(engine))
            self._pending_rng = None

    def _load_scheduler(self, saved: Mapping[str, Any]) -> None:
        """Restore the scheduler's progress; the schedule itself (e.g. ``total_iters``) comes from the config.

        Restoring the saved ``total_iters`` would keep a run resumed with more iterations at the old schedule's
        final learning rate (0 for the polynomial decay): the config's schedule is kept and, when it differs, the
        learning rate is recomputed for the current step from the scheduler's closed form.
        """
        configured = self.scheduler.state_dict()
        self.scheduler.load_state_dict(dict(saved))
        # public, non-progress entries define the schedule (total_iters, power, T_max, step_size, gamma, ...)
        changed = [
            k
            for k, v in configured.items()
            if not k.startswith("_") and k not in ("last_epoch", "base_lrs") and saved.get(k) != v
        ]
        if not changed:
            return
        for k in changed:
            setattr(self.scheduler, k, configured[k])
        closed_form = getattr(self.scheduler, "_get_closed_form_lr", None)  # PolynomialLR, StepLR, ... have one
        if closed_form is not None:
            for group, lr in zip(self.scheduler.optimizer.param_groups, closed_form(), strict=True):
                group["lr"] = lr
            self.scheduler._last_lr = [group["lr"] for group in self.scheduler.optimizer.param_groups]
        logger.info(
            "learning-rate schedule changed since the checkpoint (%s); continuing on the configured schedule",
            ", ".join(f"{k}: {saved.get(k)} -> {configured[k]}" for k in changed),
        )
