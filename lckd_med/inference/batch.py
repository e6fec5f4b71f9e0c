"""Segment a folder of NIfTI cases, each with any non-empty subset of the four MRI sequences.

Input: ``input_dir/<case_id>/`` folders holding BraTS-named files (2018-2021 ``<case>_{flair,t1,t1ce,t2}.nii.gz``
or 2023 ``<case>-{t2f,t1n,t1c,t2w}.nii.gz``; the prefix may differ from the folder name), or a CSV manifest
``case_id,flair,t1,t1ce,t2`` (an empty cell is a missing sequence; relative paths are resolved against the
manifest's folder).

Output: ``output_dir/<case_id>.nii.gz`` label maps (uint8, labels of the checkpoint's convention: 0, 1 NCR,
2 ED, 4 or 3 ET) on the grid, affine, qform and sform of the case's reference sequence (see
:mod:`lckd_med.inference.geometry`), and ``output_dir/inference_report.csv`` with one row per case. A case that
fails is reported (status ``error``, message naming the file and the reason); the others go on.

Ownership: the report lists every label map this tool wrote in ``output_dir``. A file there that it does not list is
the user's and is never overwritten (that case fails with a message); a case that fails never deletes an earlier
run's output (the row says it was kept). The report is rewritten atomically after every case, so a killed run still
says what it finished, and a re-run skips a case whose inputs have the same content (SHA-256) and whose settings
(the checkpoint's weights hash, labels, window, overlap, threshold, autocast) are the same as when its listed output
was made (the row's ``settings`` column; ``overwrite=True`` redoes it): a timestamp decides nothing. Stale temporary
files of a killed run (hidden ``.<name>.<random>.tmp.*``) and working folders whose owner process is gone are removed
at start. One run at a time writes an output folder: a second one is refused while the first holds its lock.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lckd_med.constants import (
    GRID_RULES,
    MODALITIES,
    REGIONS,
    RELEASE_FILE_SUFFIXES,
    LabelConvention,
    subset_name,
)
from lckd_med.data.layouts import DatasetConflictError, LayoutError, discover_cases
from lckd_med.data.naming import NIFTI_EXTENSIONS, SEPARATORS, match_sequence_file, nifti_stem
from lckd_med.inference.segmenter import Segmentation, Segmenter
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME, load_subset_dice
from lckd_med.utils.io import (
    printable,
    remove_stale_temporaries,
    save_label_map,
    save_nifti_atomic,
    write_text_atomic,
)
from lckd_med.utils.outputs import (
    OwnedFiles,
    check_output_folder,
    file_sha256,
    folder_lock,
    remove_stale_work_dirs,
)
from lckd_med.utils.progress import progress_bar

__all__ = [
    "NIFTI_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "REPORT_COLUMNS",
    "REPORT_NAME",
    "PROBABILITIES_DIR",
    "InferenceCase",
    "match_sequence_file",
    "discover_inference_cases",
    "read_manifest",
    "BatchInference",
    "exit_on_failure",
    "check_case_id",
]

logger = logging.getLogger(__name__)

#: Columns a manifest CSV must have (modality columns in ``MODALITIES`` order).
MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", *MODALITIES)
#: Columns of ``inference_report.csv``, in order.
REPORT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "modalities",
    "status",
    "message",
    "seconds",
    *(f"expected_dice_{r}" for r in REGIONS),
    "output",
    "settings",
)
REPORT_NAME = "inference_report.csv"
#: Sub-folder of ``output_dir`` holding the region probabilities (``save_probabilities``).
PROBABILITIES_DIR = "probabilities"
#: Prefix of the per-case working folders older versions made inside ``output_dir`` (removed when their owner is gone).
_WORK_PREFIX = ".lckd_align_"


@dataclass
class InferenceCase:
    """One case to segment.

    Attributes:
        case_id: output file stem (folder name or manifest ``case_id``).
        paths: modality key -> file, None when the sequence is missing; all four keys, ``MODALITIES`` order.
        error: why the case cannot be run (e.g. ``"no sequences"``), None when it can.
        source: the case folder, or the manifest file.
        notes: remarks that do not stop the case (files in the folder that were ignored).
    """

    case_id: str
    paths: dict[str, Path | None] = field(default_factory=lambda: dict.fromkeys(MODALITIES))
    error: str | None = None
    source: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def present(self) -> tuple[str, ...]:
        """Keys of the sequences present, in ``MODALITIES`` order."""
        return tuple(m for m in MODALITIES if self.paths.get(m) is not None)

    @property
    def subset(self) -> str:
        """Canonical subset name of the present sequences (``""`` when none)."""
        return subset_name(self.present) if self.present else ""


def _seconds(value: Any) -> float | None:
    """A report's ``seconds`` cell as a number (None when empty or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scan_case_folder(folder: Path, case_id: str | None = None) -> InferenceCase:
    """Read one case folder: its sequence files (:func:`match_sequence_file`), and why it cannot be run."""
    case = InferenceCase(case_id=folder.name if case_id is None else case_id, source=folder)
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:  # unreadable folder: this case fails, the batch goes on
        case.error = (
            f"cannot read case folder {printable(str(folder))} ({e.strerror or e}); make it readable "
            "(chmod u+rx) or move it out of input_dir"
        )
        return case
    broken, ignored = [], []
    for f in entries:
        mod = match_sequence_file(f.name)
        if f.is_symlink() and not f.exists():
            if mod is not None:  # a dropped sequence would silently change the result
                broken.append(f"{printable(str(f))} -> {printable(os.readlink(f))}")
            continue
        if f.is_file():
            if mod is not None:
                found.setdefault(mod, []).append(f)
            elif not f.name.startswith(".") and nifti_stem(f.name) is None:
                ignored.append(printable(f.name))
    if ignored:
        case.notes.append(f"ignored {len(ignored)} non-NIfTI file(s): {', '.join(ignored[:5])}")
    doubles = {m: fs for m, fs in found.items() if len(fs) > 1}
    if broken:
        case.error = f"broken symbolic link(s), target missing: {'; '.join(broken)}; fix the link or remove it"
        return case
    if doubles:
        case.error = "; ".join(f"several {m} files: {', '.join(str(f) for f in fs)}" for m, fs in doubles.items())
    for m in MODALITIES:
        if m in found:
            case.paths[m] = found[m][0]
    if not found:
        names = " or ".join(
            "<case>" + sep + "{" + ",".join(s.values()) + "}.nii.gz"
            for sep, s in zip(SEPARATORS, RELEASE_FILE_SUFFIXES.values(), strict=True)
        )
        case.error = f"no sequences in {folder} (expected files named {names})"
    return case


def check_case_id(case_id: str, where: str) -> str:
    case_id = case_id.strip()
    if not case_id:
        raise ValueError(f"{where}: empty case_id")
    if case_id in (".", "..") or any(c in case_id for c in ("/", "\\", os.sep)):
        raise ValueError(f"{where}: case_id {case_id!r} must be a plain file name (it names the output file)")
    return case_id


def read_manifest(manifest: str | os.PathLike) -> list[InferenceCase]:
    """Cases of a CSV manifest with columns ``case_id,flair,t1,t1ce,t2`` (other columns are ignored).

    An empty cell is a missing sequence; relative paths are resolved against the manifest's folder. A row with
    no sequence, or naming a file that does not exist, becomes a case with an ``error``.

    Raises:
        FileNotFoundError: no manifest file.
        ValueError: missing columns, empty or repeated ``case_id``, or a ``case_id`` that is not a file name.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in MANIFEST_COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"manifest {manifest} lacks column(s) {missing}; expected header {','.join(MANIFEST_COLUMNS)} "
                    f"(found {header or 'no header'})"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError as e:
        raise ValueError(
            f"manifest {manifest} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as "
            f"UTF-8, e.g. iconv -f latin1 -t utf-8 {manifest} > fixed.csv"
        ) from None
    except csv.Error as e:
        raise ValueError(
            f"manifest {manifest} is not a valid CSV file ({e}); expected {','.join(MANIFEST_COLUMNS)}"
        ) from None
    base = manifest.resolve().parent
    cases: list[InferenceCase] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        case_id = check_case_id(row.get("case_id", ""), f"manifest {manifest} line {i}")
        if case_id in seen:
            raise ValueError(
                f"manifest {manifest} line {i}: case_id {case_id!r} appears twice; give each row its own case_id "
                "(it names the output file)"
            )
        seen.add(case_id)
        case = InferenceCase(case_id=case_id, source=manifest)
        for m in MODALITIES:
            cell = row.get(m, "")
            if cell:
                p = Path(cell).expanduser()
                case.paths[m] = p if p.is_absolute() else base / p
        if not case.present:
            case.error = f"no sequences: manifest {manifest} line {i} has no path in columns {list(MODALITIES)}"
        cases.append(case)
    return cases


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # a link loop
        return path


def discover_inference_cases(
    input_dir: str | os.PathLike | None, manifest: str | os.PathLike | None = None
) -> list[InferenceCase]:
    """Cases to segment: the manifest's rows when given, else every case folder at or below ``input_dir``.

    Case folders are found as data preparation finds them (:func:`lckd_med.data.layouts.discover_cases`: BraTS 2018's
    ``HGG``/``LGG`` nesting, the flat 2020-2021 layout, 2023's hyphenated names, anywhere below the folder); every
    other sub-folder of ``input_dir`` itself is a case too (named after the folder), so a folder with no recognised
    sequence, an unreadable one or one whose name is not valid UTF-8 gets its own report row instead of being
    dropped. Each case folder is read by :func:`_scan_case_folder` (its sequence files recognised by
    :func:`match_sequence_file`; two files of one sequence, a dangling link, no sequence: the case's ``error``).
    Cases are sorted by ``case_id``.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder (when no manifest is given).
        ValueError: neither ``input_dir`` nor ``manifest``; a bad manifest (see :func:`read_manifest`); two case
            folders with one name (their outputs would collide).
    """
    if manifest is not None:
        return read_manifest(manifest)
    if input_dir is None:
        raise ValueError("give input_dir (a folder of case folders) or manifest (a CSV file)")
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a folder")
    try:
        found = discover_cases(root, flag="input_dir", one_edition=False)
    except LayoutError:
        found = None
    except DatasetConflictError as e:
        raise ValueError(str(e)) from None
    cases = [_scan_case_folder(c.dir, c.case_id) for c in (found.cases if found is not None else ())]
    for issue in found.problems if found is not None else ():
        logger.debug("below input_dir: %s", issue)
    taken = [_resolved(c.source) for c in cases if c.source is not None]
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        real = _resolved(d)
        if any(t == real or real in t.parents for t in taken):  # a case, or a folder holding cases
            continue
        cases.append(_scan_case_folder(d))
    by_id: dict[str, list[InferenceCase]] = {}
    for c in cases:
        by_id.setdefault(c.case_id, []).append(c)
    twice = {cid: cs for cid, cs in by_id.items() if len(cs) > 1}
    if twice:
        cid, cs = next(iter(sorted(twice.items())))
        raise ValueError(
            f"case {printable(cid)} is found {len(cs)} times below {root} ({', '.join(str(c.source) for c in cs)}); "
            "its outputs would overwrite each other: rename or move one of the folders"
        )
    return sorted(cases, key=lambda c: c.case_id)


class BatchInference:
    """Segment every case of a folder (or manifest) with one checkpoint, whatever sequences each case has.

    Per case: :class:`~lckd_med.inference.Segmenter` (read and check the sequences, put them on the reference grid,
    the checkpoint's normalisation, sliding window on the subset present, threshold, back to the reference grid,
    labels) -> uint8 NIfTI, and on request a picture (``<case_id>.png``, :func:`lckd_med.reports.overlay.save_overlay`)
    and the region probabilities (``probabilities/<case_id>.nii.gz``).

    Args:
        ckpt_path: checkpoint written by :func:`lckd_med.engines.checkpoint.save_checkpoint`, or a ``.safetensors``
            export (loaded once).
        input_dir: folder holding the case folders at any depth (may be None when ``manifest`` is given).
        output_dir: where label maps and ``inference_report.csv`` go (created).
        manifest: optional CSV ``case_id,flair,t1,t1ce,t2`` used instead of scanning ``input_dir``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: bf16 autocast on CUDA.
        roi_size: sliding-window size; None takes the checkpoint's (``inference.roi_size``, else
            ``train_config.roi_size``).
        overlap: sliding-window overlap in [0, 1); None takes the checkpoint's (``inference.overlap``), else 1/3.
        threshold: region probability above which a voxel belongs to a region, in (0, 1) (the ``"threshold"``
            decision; a softmax network's checkpoint decides by argmax, see :class:`~lckd_med.inference.Segmenter`).
        progress: show progress bars over cases and over each case's windows (drawn on a terminal only, see
            :mod:`lckd_med.utils.progress`).
        label_convention: labels to write (``"brats2018"`` ET=4, ``"brats2023"`` ET=3, or a year); None takes the
            checkpoint's.
        sw_batch_size: windows per network call.
        overwrite: redo cases whose output (listed in an earlier report) was made from the same inputs with the same
            settings; False skips them. Files this tool did not write are never overwritten either way.
        average: what overlapping windows average, ``"logits"`` or ``"probabilities"`` (the LCKD reference's);
            None takes the checkpoint's (``inference.average``), else ``"logits"``.
        postprocess: ``"none"`` or ``"reference"`` (the LCKD reference's ``postprocess.py``, k-means step only when
            the case has T1ce; :func:`lckd_med.metrics.postprocess.reference_postprocess`).
        grid: the grid each case is segmented on and written on: None (t1ce, else flair, t2, t1), a sequence name,
            ``"coarsest"`` or ``"finest"`` (see :func:`lckd_med.inference.geometry.choose_reference`).
        png: also write ``<case_id>.png``: three orthogonal slices through the tumour with the labels overlaid.
        save_probabilities: also write ``probabilities/<case_id>.nii.gz``, the region probabilities (ET, TC, WT).
        ckpt_flag: how the user gave the checkpoint, named in messages (``ckpt_dir``, ``--ckpt``).

    The intensity normalisation is the one the checkpoint was trained with (``train_config``, see
    :func:`lckd_med.data.pipelines.recipe_intensity`).

    Raises:
        FileNotFoundError / ValueError: bad checkpoint, missing ``input_dir``, or an invalid argument.
        NotADirectoryError: ``output_dir`` is a file.
    """

    def __init__(
        self,
        ckpt_path: str | os.PathLike,
        input_dir: str | os.PathLike | None,
        output_dir: str | os.PathLike,
        manifest: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        amp: bool = True,
        roi_size: int | Sequence[int] | None = None,
        overlap: float | None = None,
        threshold: float = 0.5,
        progress: bool = True,
        label_convention: int | str | LabelConvention | None = None,
        sw_batch_size: int = 1,
        overwrite: bool = False,
        average: str | None = None,
        postprocess: str = "none",
        grid: str | None = None,
        png: bool = False,
        save_probabilities: bool = False,
        ckpt_flag: str = "ckpt_dir",
    ) -> None:
        for name, flag in (
            ("amp", amp),
            ("progress", progress),
            ("overwrite", overwrite),
            ("png", png),
            ("save_probabilities", save_probabilities),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if grid is not None and grid not in (*MODALITIES, *GRID_RULES):
            raise ValueError(
                f"grid must be None, a sequence ({', '.join(MODALITIES)}) or one of {GRID_RULES}, got {grid!r}"
            )
        if input_dir is None and manifest is None:
            raise ValueError("give input_dir (a folder of case folders) or manifest (a CSV file)")
        if manifest is None and not Path(input_dir).is_dir():  # type: ignore[arg-type]
            raise FileNotFoundError(f"input_dir {input_dir} is not a folder")
        if manifest is not None and not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest {manifest} does not exist")
        check_output_folder(output_dir, "output_dir")
        self.ckpt_path = Path(ckpt_path)
        self.input_dir = Path(input_dir) if input_dir is not None else None
        self.output_dir = Path(output_dir)
        self.manifest = Path(manifest) if manifest is not None else None
        self.progress = progress
        self.overwrite = overwrite
        self.png = png
        self.save_probabilities = save_probabilities
        self._previous: dict[str, dict[str, Any]] = {}  # rows of the report an earlier run left, by case_id
        self._owned: set[str] = set()  # names of the label maps that report lists: ours to replace

        self.segmenter = Segmenter.from_checkpoint(
            self.ckpt_path,
            flag=ckpt_flag,
            device=device,
            amp=amp,
            roi_size=roi_size,
            overlap=overlap,
            threshold=threshold,
            label_convention=label_convention,
            sw_batch_size=sw_batch_size,
            average=average,
            postprocess=postprocess,
            grid=grid,
        )
        self.device = self.segmenter.device
        average = self.segmenter.average
        self.amp = amp
        self.overlap = self.segmenter.overlap
        self.threshold = self.segmenter.threshold
        self.convention = self.segmenter.convention
        self.roi_size = self.segmenter.roi_size
        self.transforms = self.segmenter.transforms
        self.grid = grid
        # what evaluation measured per subset with these weights (subset_dice.json beside model.pt; older model.pt
        # files and .safetensors exports hold it), and on which split (None: not recorded)
        self.subset_dice: Mapping[str, Mapping[str, float]]
        self.subset_dice, self.subset_dice_source = load_subset_dice(
            self.ckpt_path, {**self.segmenter.checkpoint, "weights_sha256": self.segmenter.weights_sha256}
        )
        # what decides the label maps besides the inputs (the weights by content, not by file name or date): a re-run
        # reuses an output only when this and the inputs' content are unchanged (see _case_settings)
        self.settings = hashlib.sha1(
            json.dumps(
                [self.segmenter.weights_sha256, self.convention.name, self.roi_size, self.overlap, self.threshold, amp]
                + ([average, postprocess] if (average, postprocess) != ("logits", "none") else [])
                + ([self.segmenter.decision] if self.segmenter.decision != "threshold" else [])
                + ([grid] if grid is not None else [])
            ).encode()
        ).hexdigest()[:12]

    # ---------------------------------------------------------------------------------------------------------
    def cases(self) -> list[InferenceCase]:
        """Cases to run (the output folder is skipped when it lies inside ``input_dir``).

        Raises:
            ValueError: ``output_dir`` is a case folder of ``input_dir`` (it holds sequence files): skipping it would
                drop that case without a word, writing into it would mix outputs with a case's scans.
        """
        cases = discover_inference_cases(self.input_dir, self.manifest)
        out = self.output_dir.resolve()
        for c in cases:
            if c.source is not None and c.source.resolve() == out and c.present:
                raise ValueError(
                    f"output_dir {self.output_dir} is the case folder of case {printable(c.case_id)} in input_dir "
                    f"(it holds {', '.join(str(c.paths[m].name) for m in c.present)}); choose an output_dir that "
                    "holds no scans"
                )
        return [c for c in cases if c.source is None or c.source.resolve() != out]

    def _expected_dice(self, subset: str) -> dict[str, float | None]:
        row = self.subset_dice.get(subset, {}) if subset else {}
        return {f"expected_dice_{r}": (float(row[r]) if r in row and row[r] is not None else None) for r in REGIONS}

    def predict_case(self, case: InferenceCase) -> Segmentation:
        """Label map of one case on its reference grid (:class:`~lckd_med.inference.Segmenter`), with the region
        probabilities when ``save_probabilities``."""
        return self.segmenter(
            case.paths, name=printable(case.case_id), probabilities=self.save_probabilities, progress=self.progress
        )

    def extra_outputs(self, case: InferenceCase) -> list[str]:
        """Names (relative to ``output_dir``) of the picture and probability files asked for this case."""
        return ([f"{case.case_id}.png"] if self.png else []) + (
            [f"{PROBABILITIES_DIR}/{case.case_id}.nii.gz"] if self.save_probabilities else []
        )

    def _case_settings(self, case: InferenceCase) -> str:
        """What the case's label map depends on: :attr:`settings` and the SHA-256 of every input file (in modality
        order), hashed; ``""`` when an input cannot be read."""
        try:
            inputs = [file_sha256(p) if p is not None else "" for p in (case.paths[m] for m in MODALITIES)]
        except OSError:
            return ""
        return hashlib.sha1(json.dumps([self.settings, inputs]).encode()).hexdigest()[:16]

    def _up_to_date(self, case: InferenceCase, key: str, owned: OwnedFiles) -> bool:
        """The earlier run's output of this case is listed as ok and was made from inputs of the same content with
        the same settings (``key`` from :meth:`_case_settings`), and the picture and probabilities asked for are
        there, as lckd_med wrote them."""
        prev = self._previous.get(printable(case.case_id))
        if self.overwrite or prev is None or prev.get("status") != "ok" or case.error is not None:
            return False
        return bool(key) and prev.get("settings") == key and all(owned.owns(f) for f in self.extra_outputs(case))

    def run_case(self, case: InferenceCase) -> dict[str, Any]:
        """Segment one case and write its label map (and picture, probabilities); never raises for a bad case (the
        row says why)."""
        t0 = time.perf_counter()
        key = self._case_settings(case) if case.error is None else ""
        row: dict[str, Any] = {
            "case_id": printable(case.case_id),
            "modalities": case.subset,
            "status": "error",
            "message": "",
            **self._expected_dice(case.subset),
            "output": "",
            "settings": key,
        }
        target = self.output_dir / f"{case.case_id}.nii.gz"
        owned = OwnedFiles(self.output_dir, overwrite=False, flag=None)  # files of the user's: never replaced
        exists = target.exists() or target.is_symlink()
        if exists and target.name not in self._owned:  # the user's file: never overwritten
            row["message"] = (
                f"refusing to overwrite {printable(str(target))}: lckd_med did not write it (it is not listed in "
                f"{self.output_dir / REPORT_NAME}); move it away or choose another output_dir"
            )
            row["seconds"] = round(time.perf_counter() - t0, 3)
            return row
        if exists and self._up_to_date(case, key, owned):
            previous = self._previous[printable(case.case_id)]
            row = {**previous, **self._expected_dice(case.subset)}
            row["message"] = (
                "up to date: made from inputs of the same content with the same settings, not recomputed "
                "(overwrite=True redoes it)"
            )
            row["seconds"] = _seconds(previous.get("seconds"))  # the time it took to make, not the skip's
            return row
        notes = list(case.notes)
        try:
            if case.error is not None:
                raise ValueError(case.error)
            owned.check(*self.extra_outputs(case))
            seg = self.predict_case(case)
            save_label_map(seg.labels, seg.reference_image, target)
            self._write_extras(case, seg, owned)
            row.update(
                status="ok",
                message="; ".join([*seg.notes, *(f"warning: {w}" for w in seg.warnings), *notes]),
                output=printable(str(target)),
            )
        except Exception as e:  # one bad case must not stop the batch: report it and go on
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            if target.exists():  # ours, from an earlier run: kept (this run may fail for a passing reason)
                msg += f" (kept {target.name} from an earlier run: it is not a result of this run)"
                row["output"] = printable(str(target))
            row["message"] = printable("; ".join([msg, *notes]))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    def _write_extras(self, case: InferenceCase, seg: Segmentation, owned: OwnedFiles) -> None:
        """The picture and the probabilities of one case, when asked for, recorded as lckd_med's."""
        written = []
        if self.png:
            seg.save_png(self.output_dir / f"{case.case_id}.png", title=printable(case.case_id))
            written.append(f"{case.case_id}.png")
        if self.save_probabilities:
            rel = f"{PROBABILITIES_DIR}/{case.case_id}.nii.gz"
            (self.output_dir / PROBABILITIES_DIR).mkdir(exist_ok=True)
            save_nifti_atomic(seg.probability_image(), self.output_dir / rel)
            written.append(rel)
        if written:
            owned.record(*written)

    def _make_output_dir(self) -> None:
        """Create ``output_dir`` and check it is writable (before any case runs).

        Raises:
            PermissionError: it cannot be created or written (read-only or full file system, no permission).
        """
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.output_dir, prefix=".lckd_write_check_"):
                pass
        except OSError as e:
            raise PermissionError(
                f"output_dir {self.output_dir} is not writable ({e.strerror or e}); choose another folder or fix "
                "its permissions"
            ) from None

    def _prepare_output_dir(self) -> None:
        """Create ``output_dir``, check it is writable, read what an earlier run wrote, clear its temporaries (files of
        :func:`~lckd_med.utils.io.atomic_path` and working folders whose owner process is gone).

        Raises:
            PermissionError: ``output_dir`` cannot be created or written (checked before any case runs).
            ValueError: an ``inference_report.csv`` there was not written by this tool.
        """
        self._make_output_dir()
        removed = remove_stale_temporaries(self.output_dir) + remove_stale_work_dirs(self.output_dir, _WORK_PREFIX)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), self.output_dir)
        report = self.output_dir / REPORT_NAME
        self._previous, self._owned = {}, set()
        if not report.exists():
            return
        try:
            previous = pd.read_csv(report, dtype=str, keep_default_na=False)
        except Exception as e:  # any parser failure: not a report of ours
            previous, why = None, f"{type(e).__name__}: {e}"
        else:
            why = f"its columns are {list(previous.columns)}"
        if previous is not None and "settings" not in previous.columns:  # written before that column existed
            previous["settings"] = ""
        if previous is None or list(previous.columns) != list(REPORT_COLUMNS):
            raise ValueError(
                f"{report} was not written by lckd_med inference ({why}); move it away or choose another output_dir"
            )
        for r in previous.to_dict("records"):
            self._previous[r["case_id"]] = r
            if r["output"]:
                self._owned.add(Path(r["output"]).name)

    def _write_report(self, cases: Sequence[InferenceCase], done: Mapping[str, dict[str, Any]]) -> Path:
        """Rows of this run's finished cases, the earlier report's rows of the others (their files are untouched
        so far), and earlier rows of cases no longer in the input whose output is still there."""
        ids = [printable(c.case_id) for c in cases]
        rows = [done[i] if i in done else self._previous[i] for i in ids if i in done or i in self._previous]
        for i, r in self._previous.items():
            if i not in set(ids) and r.get("output") and (self.output_dir / Path(r["output"]).name).exists():
                rows.append(r)
        report = self.output_dir / REPORT_NAME
        df = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
        write_text_atomic(report, df.to_csv(index=False), errors="backslashreplace")
        return report

    def run(self) -> pd.DataFrame:
        """Segment all cases, write ``inference_report.csv`` and return it as a DataFrame (``REPORT_COLUMNS``).

        Raises:
            ValueError: no case found.
        """
        cases = self.cases()
        if not cases:
            where = self.manifest if self.manifest is not None else self.input_dir
            raise ValueError(
                f"no cases found in {where}: expected case folders (at any depth, named as BraTS ships them, e.g. "
                "<case>/<case>_t1ce.nii.gz or <case>/<case>-t1c.nii.gz) or manifest rows"
            )
        self._make_output_dir()
        with folder_lock(self.output_dir, "inference"):  # two runs would interleave their report and outputs
            return self._run_locked(cases)

    def _run_locked(self, cases: list[InferenceCase]) -> pd.DataFrame:
        self._prepare_output_dir()
        logger.info(
            "segmenting %d case(s) from %s into %s on %s (roi %s, overlap %.3g, %s, labels %s)",
            len(cases),
            self.manifest or self.input_dir,
            self.output_dir,
            self.device,
            self.roi_size,
            self.overlap,
            "argmax over the classes" if self.segmenter.decision == "argmax" else f"threshold {self.threshold:g}",
            self.convention.name,
        )
        if not self.subset_dice:
            logger.info(
                "the expected_dice_* columns stay empty: no per-subset Dice was measured with these weights (the "
                "evaluate bundle writes %s beside the checkpoint; inference then fills them)",
                SUBSET_DICE_NAME,
            )
        rows = []
        done: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        report = self.output_dir / REPORT_NAME
        for case in progress_bar(cases, desc="inference", enabled=self.progress):
            try:
                row = self.run_case(case)
            except KeyboardInterrupt:  # Ctrl-C: the report already lists every finished case
                print(
                    f"error: interrupted after {len(done)} of {len(cases)} case(s); {report} lists them; run the "
                    "same command again to do the rest (finished cases are skipped)",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(130) from None
            rows.append(row)
            done[row["case_id"]] = row
            self._write_report(cases, done)  # after every case: a killed run still says what it did
            if row["status"] == "ok":
                note = f" [{row['message']}]" if row["message"] else ""
                logger.info(
                    "%s: ok (%s) %.1f s -> %s%s", row["case_id"], row["modalities"], row["seconds"], row["output"], note
                )
            else:
                logger.error("%s: error: %s", row["case_id"], row["message"])
        df = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
        n_ok = int((df["status"] == "ok").sum())
        logger.info(
            "done: %d/%d case(s) segmented, %d failed, %.1f s; report %s",
            n_ok,
            len(df),
            len(df) - n_ok,
            time.perf_counter() - t0,
            report,
        )
        return df

    def run_and_exit(self) -> pd.DataFrame:
        """:meth:`run`, then :func:`exit_on_failure` (the last step of a bundle's inference run list)."""
        return exit_on_failure(self.run())


def exit_on_failure(report: pd.DataFrame) -> pd.DataFrame:
    """Return ``report`` when every case succeeded; else raise ``SystemExit`` (exit status 1) naming the failures.

    Raises:
        SystemExit: some row's status is not ``"ok"``; the message lists the failed cases.
    """
    failed = report[report["status"] != "ok"]
    if len(failed):
        lines = "\n".join(f"  {r.case_id}: {r.message}" for r in failed.itertuples())
        msg = f"inference failed for {len(failed)} of {len(report)} case(s):\n{lines}"
        logger.error(msg)
        sys.stderr.flush()
        raise SystemExit(msg)
    return report
