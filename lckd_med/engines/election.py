"""Teacher election: score each single modality on validation cases and elect the best one per region.

Every ``interval`` iterations (and at the switch to the missing-modality phase) the current model segments the
validation cases with each modality alone (whole volume, sliding window, one encoding per window); the mean
legacy Dice per region decides, per region (ET, TC, WT), which modality teaches. The teacher set is the union.
Ties go to the modality that comes first in ``MODALITIES`` so every rank and every rerun agrees.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from lckd_med.constants import MODALITIES, NUM_MODALITIES, NUM_REGIONS, REGIONS, SINGLE_SUBSETS
from lckd_med.engines.checkpoint import unwrap_model
from lckd_med.inference.sweep import sweep_subsets
from lckd_med.metrics import legacy_dice
from lckd_med.utils.io import write_text_atomic

__all__ = [
    "ELECTION_COLUMNS",
    "TeacherState",
    "single_modality_dice",
    "elect_teachers",
    "TeacherElectionHandler",
]

ELECTION_COLUMNS = ("iteration", "modality", "region", "dice", "elected")
logger = logging.getLogger(__name__)


class TeacherState:
    """The current teachers and the election record, shared by the trainer, the election and the checkpoint.

    Args:
        default: teacher modality keys used before the first election (e.g. ``["t1ce"]``).
    """

    def __init__(self, default: Sequence[str] = ("t1ce",)) -> None:
        default = list(default)
        bad = [m for m in default if m not in MODALITIES]
        if bad:
            raise ValueError(f"default teachers {bad} are not modality keys {MODALITIES}")
        self.teachers: list[str] = [m for m in MODALITIES if m in default]
        self.history: list[dict[str, Any]] = []

    def mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(4,)`` boolean teacher mask in modality order."""
        return torch.tensor([m in self.teachers for m in MODALITIES], dtype=torch.bool, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {"teachers": list(self.teachers), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teachers = [m for m in MODALITIES if m in state.get("teachers", [])] or self.teachers
        self.history = [dict(r) for r in state.get("history", [])]


@torch.no_grad()
def single_modality_dice(
    network: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    roi_size: Sequence[int],
    device: torch.device | str,
    subsets: Sequence[str] = SINGLE_SUBSETS,
    overlap: float = 1 / 3,
    amp: bool = True,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, int]:
    """Sum of per-case legacy Dice for each subset and region, and the number of cases.

    Args:
        network: the model (set to eval mode here, restored afterwards).
        loader: batches with ``image`` ``(B, 4, *S)`` and region ``label`` ``(B, 3, *S)`` (ET, TC, WT).
        subsets: subset names to score (default: the four single modalities, modality order).

    Returns:
        ``(sums (K, 3) float64 on CPU, n_cases)``; divide for the mean (kept apart so ranks can all-reduce).
    """
    was_training = network.training
    network.eval()
    sums = torch.zeros(len(subsets), NUM_REGIONS, dtype=torch.float64)
    n = 0
    try:
        for batch in loader:
            image = batch["image"].to(device)
            label = torch.as_tensor(batch["label"]).to(device) > 0.5
            logits = sweep_subsets(network, image, roi_size, subsets=subsets, overlap=overlap, amp=amp)
            pred = torch.sigmoid(logits) > threshold
            for b in range(image.shape[0]):
                for k in range(len(subsets)):
                    for r in range(NUM_REGIONS):
                        sums[k, r] += legacy_dice(pred[b, k, r], label[b, r])
                n += 1
    finally:
        network.train(was_training)
    return sums, n


def elect_teachers(mean_dice: torch.Tensor) -> dict[str, str]:
    """Best single modality per region; ties go to the earlier modality in ``MODALITIES``.

    Args:
        mean_dice: ``(4, 3)`` mean Dice, rows in modality order, columns in region order.

    Returns:
        ``{region: modality}`` in region order.
    """
    mean_dice = torch.as_tensor(mean_dice, dtype=torch.float64)
    if tuple(mean_dice.shape) != (NUM_MODALITIES, NUM_REGIONS):
        raise ValueError(f"mean_dice must be ({NUM_MODALITIES}, {NUM_REGIONS}), got {tuple(mean_dice.shape)}")
    if not bool(torch.isfinite(mean_dice).all()):
        raise ValueError("mean_dice has non-finite values; cannot elect teachers")
    elected = {}
    for r, region in enumerate(REGIONS):
        col = mean_dice[:, r]
        best = int(torch.nonzero(col == col.max())[0])  # first maximum: deterministic tie-break
        elected[region] = MODALITIES[best]
    return elected


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ELECTION_COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in ELECTION_COLUMNS})
    write_text_atomic(path, buf.getvalue())


class TeacherElectionHandler:
    """Ignite handler that runs the election on a schedule and updates a :class:`TeacherState`.

    Args:
        teacher_state: shared with the trainer and the checkpoint handler.
        val_loader: validation batches (evaluation transforms, batch size 1 is typical).
        roi_size: sliding-window size.
        interval: elect every ``interval`` iterations (0 disables the periodic election).
        phase_switch_iteration: also elect at this iteration (the start of the missing-modality phase);
            ``None`` to skip.
        output_dir: ``teacher_election.csv`` is (re)written there after every election.
        overlap, amp: sliding-window overlap and bf16 autocast on CUDA.
        summary_writer: optional TensorBoard ``SummaryWriter`` (rank 0 only) for ``election/<modality>_<region>``.
        elect_at_end: also elect when training completes (so the checkpoint's teachers reflect the final model).

    Under ``torch.distributed`` each rank scores its own shard of ``val_loader`` and Dice sums are all-reduced,
    so every rank elects the same teachers.
    """

    def __init__(
        self,
        teacher_state: TeacherState,
        val_loader: Iterable[dict[str, Any]],
        roi_size: Sequence[int],
        interval: int,
        output_dir: str | os.PathLike,
        phase_switch_iteration: int | None = None,
        overlap: float = 1 / 3,
        amp: bool = True,
        summary_writer: Any = None,
        elect_at_end: bool = False,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 (0 disables periodic elections), got {interval}")
        if phase_switch_iteration is not None and phase_switch_iteration < 0:
            raise ValueError(f"phase_switch_iteration must be >= 0, got {phase_switch_iteration}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.teacher_state = teacher_state
        self.val_loader = val_loader
        self.roi_size = tuple(int(r) for r in roi_size)
        self.interval = int(interval)
        self.phase_switch_iteration = phase_switch_iteration
        self.output_dir = Path(output_dir)
        self.overlap = overlap
        self.amp = amp
        self.summary_writer = summary_writer
        self.elect_at_end = elect_at_end

    def _due(self, engine: Engine, iteration: int) -> bool:
        if self.interval > 0 and iteration % self.interval == 0:
            return True
        return self.phase_switch_iteration is not None and iteration == self.phase_switch_iteration

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self)
        if self.elect_at_end:
            engine.add_event_handler(Events.COMPLETED, self._at_end)

    def _at_end(self, engine: Engine) -> None:
        done = {r["iteration"] for r in self.teacher_state.history}
        if engine.state.iteration not in done:
            self(engine)

    def __call__(self, engine: Engine) -> dict[str, str]:
        # encode/decode_subsets live on the bare module, not on a DistributedDataParallel wrapper
        network = unwrap_model(engine.network)
        device = engine.state.device
        sums, n = single_modality_dice(
            network, self.val_loader, self.roi_size, device, overlap=self.overlap, amp=self.amp
        )
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([sums.flatten(), torch.tensor([float(n)], dtype=torch.float64)])
            packed = packed.to(device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(packed)
            packed = packed.cpu()
            sums, n = packed[:-1].reshape(sums.shape), int(round(float(packed[-1])))
        if n == 0:
            raise RuntimeError("teacher election found no validation cases; check the datalist's validation split")
        mean = sums / n
        elected = elect_teachers(mean)
        iteration = int(engine.state.iteration)
        self.teacher_state.teachers = [m for m in MODALITIES if m in elected.values()]
        for m, modality in enumerate(MODALITIES):
            for r, region in enumerate(REGIONS):
                self.teacher_state.history.append(
                    {
                        "iteration": iteration,
                        "modality": modality,
                        "region": region,
                        "dice": round(float(mean[m, r]), 6),
                        "elected": "true" if elected[region] == modality else "false",
                    }
                )
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if rank0:
            _write_csv_atomic(self.output_dir / "teacher_election.csv", self.teacher_state.history)
            if self.summary_writer is not None:
                for m, modality in enumerate(MODALITIES):
                    for r, region in enumerate(REGIONS):
                        self.summary_writer.add_scalar(f"election/{modality}_{region}", float(mean[m, r]), iteration)
                self.summary_writer.flush()
        table = ", ".join(
            f"{mod}: " + "/".join(f"{float(mean[m, r]):.3f}" for r in range(NUM_REGIONS))
            for m, mod in enumerate(MODALITIES)
        )
        logger.info(
            "teacher election at iteration %d on %d case(s), Dice ET/TC/WT %s -> %s; teachers %s",
            iteration,
            n,
            table,
            ", ".join(f"{k}={v}" for k, v in elected.items()),
            "+".join(self.teacher_state.teachers),
        )
        return elected
