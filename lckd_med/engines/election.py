"""Teacher election: score each single modality on validation cases and elect the best one per region.

As in the LCKD reference (train.py), the election runs after the first iteration and then every ``interval``
iterations (iterations 1, 5001, 10001, ... -- the reference's 0-based ``i_iter % 5000 == 0``); optionally also at the
switch to the missing-modality phase and at the end. The reference's phase-2 run starts from its ``--teachers``
default again and re-runs one iteration index (``phase2_overlap``, see :mod:`lckd_med.engines.schedules`): the
handler can reset the teachers to their default (:meth:`lckd_med.methods.lckd.TeacherState.reset`, LCKD's state)
before the first phase-2 iteration and shift the phase-2 schedule by the overlap. The current model segments the
validation cases with each modality alone (whole volume, sliding window with uniform blending, one encoding per
window); the mean score per region decides, per region (ET, TC, WT), which modality teaches. The teacher set is the
union. Ties go to the modality that comes first in ``MODALITIES`` so every rank and every rerun agrees.

Scores (:data:`ELECTION_SCORES`): ``"soft"`` (default, the reference's ``dice_score``): per case and region
``2 sum(p g) / (sum p + sum g + 1)`` with ``p`` the sigmoid probabilities; ``"legacy"``: the hard legacy BraTS Dice
of the thresholded prediction (an empty prediction on an empty region scores 1, which rewards sequences that predict
nothing on cases without ET). A validation case that lacks a sequence on disk (``modality_mask`` False) is not scored
for that sequence: each modality's mean runs over the cases that have it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from lckd_med.constants import NUM_REGIONS, REGIONS
from lckd_med.engines.checkpoint import unwrap_model
from lckd_med.methods.lckd import TeacherState
from lckd_med.metrics import legacy_dice
from lckd_med.modalities import ModalitySpec, spec_of
from lckd_med.networks.outputs import default_decision, output_kind, region_masks
from lckd_med.prediction import BLEND_MODES, SubsetPredictor
from lckd_med.utils.io import write_text_atomic
from lckd_med.utils.outputs import OwnedFiles

__all__ = [
    "ELECTION_COLUMNS",
    "ELECTION_SCORES",
    "soft_dice",
    "single_modality_dice",
    "elect_teachers",
    "TeacherElectionHandler",
]

ELECTION_COLUMNS = ("iteration", "modality", "region", "dice", "elected")
#: The election record in ``output_dir``.
ELECTION_FILE = "teacher_election.csv"
#: ``"soft"``: the reference's soft Dice of the probabilities (default); ``"legacy"``: hard legacy BraTS Dice.
ELECTION_SCORES: tuple[str, ...] = ("soft", "legacy")
logger = logging.getLogger(__name__)


def soft_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The LCKD reference's soft Dice per region: ``2 sum(p g) / (sum p + sum g + 1)``.

    Args:
        prob: probabilities ``(R, *S)``.
        target: binary target ``(R, *S)``.

    Returns:
        ``(R,)`` float64 scores (0 when the region is empty in the target, however small ``p``).
    """
    p = prob.flatten(1).double()
    g = target.flatten(1).double()
    return 2 * (p * g).sum(1) / (p.sum(1) + g.sum(1) + 1)


@torch.no_grad()
def single_modality_dice(
    network: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    roi_size: Sequence[int],
    device: torch.device | str,
    subsets: Sequence[str] | None = None,
    overlap: float = 1 / 3,
    amp: bool = True,
    threshold: float = 0.5,
    score: str = "soft",
    mode: str = "constant",
    modalities: ModalitySpec | Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-case scores for each subset and region, and the number of cases scored for each subset.

    Args:
        network: the model (set to eval mode here, restored afterwards).
        loader: batches with ``image`` ``(B, C, *S)``, region ``label`` ``(B, 3, *S)`` (ET, TC, WT) and optionally
            ``modality_mask`` ``(B, M)``: a case is scored only for the subsets whose sequences it has.
        subsets: subset names to score (default: the single modalities, modality order).
        overlap, mode: sliding-window overlap and blending (``"constant"``: uniform, the reference's).
        threshold: region-probability threshold of the ``"legacy"`` score (a network whose output kind is
            ``"classes"`` decides by argmax instead, :func:`~lckd_med.networks.outputs.default_decision`).
        score: ``"soft"`` (reference soft Dice of the probabilities) or ``"legacy"`` (hard legacy BraTS Dice).
        modalities: the modality spec of the images and subset names (``None`` = BraTS).

    Returns:
        ``(sums (K, 3) float64, counts (K,) int64)`` on CPU; divide for the means (kept apart so ranks can
        all-reduce).
    """
    if score not in ELECTION_SCORES:
        raise ValueError(f"score must be one of {ELECTION_SCORES}, got {score!r}")
    spec = spec_of(modalities)
    subsets = spec.single_subsets if subsets is None else subsets
    predictor = SubsetPredictor(network, roi_size, overlap=overlap, mode=mode, amp=amp, device=device, modalities=spec)
    needs = [torch.from_numpy(spec.subset_to_mask(s)) for s in subsets]
    decision = default_decision(output_kind(network))  # threshold for region sigmoids, argmax for classes
    was_training = network.training
    network.eval()
    sums = torch.zeros(len(subsets), NUM_REGIONS, dtype=torch.float64)
    counts = torch.zeros(len(subsets), dtype=torch.int64)
    try:
        for batch in loader:
            image = batch["image"].to(device)
            label = torch.as_tensor(batch["label"]).to(device) > 0.5
            if batch.get("modality_mask") is not None:
                avail = (
                    torch.as_tensor(batch["modality_mask"]).reshape(image.shape[0], spec.num_modalities).cpu().bool()
                )
            else:
                avail = torch.ones(image.shape[0], spec.num_modalities, dtype=torch.bool)
            for b in range(image.shape[0]):
                scored = [k for k, need in enumerate(needs) if bool((avail[b] | ~need).all())]
                if not scored:
                    continue
                logits = predictor(image[b : b + 1], [subsets[k] for k in scored])[0]
                prob = torch.sigmoid(logits)  # region probabilities, whatever the network's output kind
                for i, k in enumerate(scored):
                    if score == "soft":
                        sums[k] += soft_dice(prob[i], label[b]).cpu()
                    else:
                        masks = region_masks(prob[i], decision, threshold, dim=0)
                        for r in range(NUM_REGIONS):
                            sums[k, r] += legacy_dice(masks[r], label[b, r])
                    counts[k] += 1
    finally:
        network.train(was_training)
    return sums, counts


def elect_teachers(
    mean_dice: torch.Tensor, modalities: ModalitySpec | Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Best single modality per region; ties go to the earlier modality in the spec's order.

    Args:
        mean_dice: ``(M, 3)`` mean Dice, rows in modality order, columns in region order.
        modalities: the modality spec naming the rows (``None`` = BraTS, ``M = 4``).

    Returns:
        ``{region: modality}`` in region order.
    """
    spec = spec_of(modalities)
    mean_dice = torch.as_tensor(mean_dice, dtype=torch.float64)
    if tuple(mean_dice.shape) != (spec.num_modalities, NUM_REGIONS):
        raise ValueError(f"mean_dice must be ({spec.num_modalities}, {NUM_REGIONS}), got {tuple(mean_dice.shape)}")
    if not bool(torch.isfinite(mean_dice).all()):
        raise ValueError("mean_dice has non-finite values; cannot elect teachers")
    elected = {}
    for r, region in enumerate(REGIONS):
        col = mean_dice[:, r]
        best = int(torch.nonzero(col == col.max())[0])  # first maximum: deterministic tie-break
        elected[region] = spec.names[best]
    return elected


def _check_record_writable(path: Path) -> None:
    """Refuse to replace a ``teacher_election.csv`` that lckd_med did not write (not in the folder's ownership record
    and not an election record by its header).

    Raises:
        FileExistsError: naming the file (it is left untouched).
    """
    try:
        with open(path, encoding="utf-8") as f:
            if f.readline().strip() == ",".join(ELECTION_COLUMNS):
                return  # an election record (also one written before ownership records existed)
    except (OSError, UnicodeDecodeError):
        pass
    OwnedFiles(path.parent, flag=None).check(path.name)


def _write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    _check_record_writable(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ELECTION_COLUMNS))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in ELECTION_COLUMNS})
    write_text_atomic(path, buf.getvalue())
    OwnedFiles(path.parent).record(path.name)


class TeacherElectionHandler:
    """Ignite handler that runs the election on a schedule and updates a :class:`TeacherState`.

    Args:
        teacher_state: shared with the trainer and the checkpoint handler.
        val_loader: validation batches (evaluation transforms, batch size 1 is typical).
        roi_size: sliding-window size.
        interval: elect every ``interval`` iterations after ``first_election`` (0 disables the periodic election).
        first_election: iteration of the first election (1: after the first iteration, as the reference), the
            periodic ones follow at ``first_election + n * interval``; ``None`` = multiples of ``interval`` only.
        phase_switch_iteration: also elect at this iteration (the last all-sequence iteration); ``None`` to skip
            (the reference has no extra election there).
        output_dir: ``teacher_election.csv`` is (re)written there after every election.
        overlap, amp: sliding-window overlap and bf16 autocast on CUDA.
        mode: sliding-window blending (``"constant"``, the reference's, or ``"gaussian"``).
        score: ``"soft"`` (reference soft Dice, default) or ``"legacy"`` (hard legacy Dice), see the module docstring.
        summary_writer: optional TensorBoard ``SummaryWriter`` (rank 0 only) for ``election/<modality>_<region>``.
        elect_at_end: also elect when training completes (so the checkpoint's teachers reflect the final model).
        reset_iteration: before this iteration the teachers go back to ``teacher_state``'s default (the reference's
            phase-2 run starts from its ``--teachers`` default: the first phase-2 iteration); ``None`` never.
        phase2_start, phase2_overlap: from iteration ``phase2_start`` on, the periodic schedule counts iterations
            minus ``phase2_overlap`` (the reference's phase-2 run re-runs that many iteration indices, see
            :mod:`lckd_med.engines.schedules`); ``phase2_start=None`` or overlap 0: no shift.

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
        first_election: int | None = 1,
        score: str = "soft",
        mode: str = "constant",
        reset_iteration: int | None = None,
        phase2_start: int | None = None,
        phase2_overlap: int = 0,
    ) -> None:
        for name, value in (("reset_iteration", reset_iteration), ("phase2_start", phase2_start)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if isinstance(phase2_overlap, bool) or not isinstance(phase2_overlap, int) or phase2_overlap < 0:
            raise ValueError(f"phase2_overlap must be an int >= 0, got {phase2_overlap!r}")
        self.reset_iteration = reset_iteration
        self.phase2_start = phase2_start
        self.phase2_overlap = phase2_overlap
        if interval < 0:
            raise ValueError(f"interval must be >= 0 (0 disables periodic elections), got {interval}")
        if first_election is not None and (
            isinstance(first_election, bool) or not isinstance(first_election, int) or first_election < 1
        ):
            raise ValueError(f"first_election must be None or an int >= 1, got {first_election!r}")
        if score not in ELECTION_SCORES:
            raise ValueError(f"score must be one of {ELECTION_SCORES}, got {score!r}")
        if mode not in BLEND_MODES:
            raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
        self.first_election = first_election
        self.score = score
        self.mode = mode
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
        if self.phase_switch_iteration is not None and iteration == self.phase_switch_iteration:
            return True
        if self.phase2_start is not None and iteration >= self.phase2_start:
            iteration -= self.phase2_overlap  # the reference's iteration index in its phase-2 run
        first = self.first_election
        if first is not None and iteration == first:
            return True
        offset = 0 if first is None else first
        return self.interval > 0 and iteration >= offset and (iteration - offset) % self.interval == 0

    def attach(self, engine: Engine) -> None:
        # before the first iteration, not at the first election minutes later
        engine.add_event_handler(Events.STARTED, lambda _: _check_record_writable(self.output_dir / ELECTION_FILE))
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self)
        if self.reset_iteration is not None:
            engine.add_event_handler(Events.ITERATION_STARTED(once=self.reset_iteration), self._reset)
        if self.elect_at_end:
            engine.add_event_handler(Events.COMPLETED, self._at_end)

    def _reset(self, engine: Engine) -> None:
        self.teacher_state.reset()
        logger.info(
            "teachers reset to the default (%s) before iteration %d",
            "+".join(self.teacher_state.teachers) or "none",
            engine.state.iteration,
        )

    def _at_end(self, engine: Engine) -> None:
        done = {r["iteration"] for r in self.teacher_state.history}
        if engine.state.iteration not in done:
            self(engine)

    def __call__(self, engine: Engine) -> dict[str, str]:
        # encode/decode_subsets live on the bare module, not on a DistributedDataParallel wrapper
        network = unwrap_model(engine.network)
        device = engine.state.device
        spec = self.teacher_state.spec
        sums, counts = single_modality_dice(
            network,
            self.val_loader,
            self.roi_size,
            device,
            overlap=self.overlap,
            amp=self.amp,
            score=self.score,
            mode=self.mode,
            modalities=spec,
        )
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([sums.flatten(), counts.to(torch.float64)])
            packed = packed.to(device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(packed)
            packed = packed.cpu()
            sums = packed[: sums.numel()].reshape(sums.shape)
            counts = packed[sums.numel() :].round().to(torch.int64)
        if int(counts.sum()) == 0:
            raise RuntimeError("teacher election found no validation cases; check the datalist's validation split")
        n = int(counts.max())
        mean = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
        mean[counts == 0] = float("nan")
        unscored = [m for m, c in zip(spec.names, counts.tolist(), strict=True) if c == 0]
        if unscored:
            logger.warning("teacher election: no validation case has %s; not eligible", ", ".join(unscored))
        # scores are in [0, 1]: -1 keeps a modality no case has from being elected
        elected = elect_teachers(torch.nan_to_num(mean, nan=-1.0), spec)
        iteration = int(engine.state.iteration)
        self.teacher_state.teachers = [m for m in spec.names if m in elected.values()]
        for m, modality in enumerate(spec.names):
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
            _write_csv_atomic(self.output_dir / ELECTION_FILE, self.teacher_state.history)
            if self.summary_writer is not None:
                for m, modality in enumerate(spec.names):
                    for r, region in enumerate(REGIONS):
                        self.summary_writer.add_scalar(f"election/{modality}_{region}", float(mean[m, r]), iteration)
                self.summary_writer.flush()
        table = ", ".join(
            f"{mod}: " + "/".join(f"{float(mean[m, r]):.3f}" for r in range(NUM_REGIONS))
            for m, mod in enumerate(spec.names)
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
