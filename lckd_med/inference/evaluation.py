"""Evaluate a trained model under every modality subset and write the per-subset reports.

Two steps, the nnU-Net pattern. Predict: for each case of the chosen split, one sliding-window pass
(:class:`~lckd_med.prediction.SubsetPredictor`) that encodes every window once and decodes it for all subsets the
case allows; predictions are inverted to the input's own grid (shape, affine, orientation), turned into BraTS
labels and written to ``predictions/<subset>/<case_id>``. Score: that folder against the datalist's label files
with :func:`lckd_med.reports.folder_scores.score_folder`, the code behind ``lckd-med evaluate-folder``, so the CSV is
reproducible from the saved files and predictions of any other tool score the same way. Without
``save_predictions`` the label maps go to a scratch folder removed afterwards.

The per-subset mean Dice also goes to ``subset_dice.json`` beside ``model.pt`` (:data:`SUBSET_DICE_NAME`): batch
inference reads it to tell users what to expect from the sequences they have.

With ``postprocess="reference"`` every prediction is also post-processed as the LCKD reference's ``postprocess.py``
(:func:`lckd_med.metrics.postprocess.reference_postprocess`; its k-means step only for subsets with T1ce) and scored
into the same reports under ``postprocessed/`` (:data:`POSTPROCESSED_DIR`), beside the raw ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from monai.data import DataLoader, Dataset

from lckd_med.constants import AFFINE_ATOL_MM, REGIONS, LabelConvention
from lckd_med.data.datalist import SPLITS
from lckd_med.data.validation import case_file_problems, label_file_problems
from lckd_med.data.volume import read_nifti
from lckd_med.engines.checkpoint import CHECKPOINT_NAME
from lckd_med.engines.workflow import datalist_meta, load_split
from lckd_med.inference.batch import check_case_id
from lckd_med.inference.geometry import REFERENCE_PRIORITY
from lckd_med.inference.segmenter import Segmenter
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME, read_subset_dice
from lckd_med.metrics import HD95_METHODS
from lckd_med.metrics.postprocess import POSTPROCESSINGS, reference_postprocess
from lckd_med.modalities import BRATS, ModalitySpec, spec_of
from lckd_med.prediction import BLEND_MODES, WINDOW_AVERAGES, resolve_device
from lckd_med.reports import REPORT_FILES, format_table, read_summary, summarize, write_reports
from lckd_med.reports.folder_scores import score_folder, voxel_spacing
from lckd_med.reports.overlay import save_overlay
from lckd_med.reports.subset_report import check_reports_writable
from lckd_med.utils.io import save_label_map, write_text_atomic
from lckd_med.utils.outputs import OWNER_MARKER, OwnedFiles, check_output_folder, make_work_dir, remove_stale_work_dirs
from lckd_med.utils.progress import progress_bar

__all__ = [
    "SUBSET_DICE_NAME",
    "POSTPROCESSED_DIR",
    "PNG_DIR",
    "SubsetEvaluator",
    "read_subset_dice",
    "voxel_spacing",
    "summary_table",
]

logger = logging.getLogger(__name__)
#: Sub-folder of ``output_dir`` holding one picture per case (``png``).
PNG_DIR = "png"
#: Sub-folder of ``output_dir`` holding the reports of the reference post-processing (``postprocess="reference"``).
POSTPROCESSED_DIR = "postprocessed"
#: Prefix of the staging folders the predictions are written to before scoring (see :func:`make_work_dir`).
_STAGE_PREFIX = ".lckd_eval_"


def _single(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate of a batch of one: the sample dict itself (Invertd needs its MetaTensors uncollated)."""
    return batch[0]


def _spatial_reference(img: nib.Nifti1Image, spatial_dims: int) -> nib.Nifti1Image:
    """``img``, or for a multi-channel file (vector components after the spatial axes) an empty image of its
    spatial grid with its header: the grid a prediction is written on."""
    if len(img.shape) == spatial_dims:
        return img
    return nib.Nifti1Image(np.zeros(img.shape[:spatial_dims], np.uint8), img.affine, img.header.copy())


def summary_table(output_dir: str | os.PathLike) -> str:
    """The per-subset Markdown table of an evaluation's ``subset_summary.csv`` (what the demo prints)."""
    return format_table(read_summary(Path(output_dir) / REPORT_FILES["summary_csv"]))


class SubsetEvaluator:
    """Sweep all 15 modality subsets over one split of a datalist and write the reports.

    Another modality set (``modalities``, a :class:`~lckd_med.modalities.ModalitySpec`) sweeps its own
    ``2**M - 1`` subsets; the datalist's ``meta.modality_spec`` and the checkpoint's must equal it.

    Args:
        ckpt_dir: folder of ``model.pt`` (the network is rebuilt from it, whatever config trained it).
        datalist: datalist JSON (``python -m data_prep.brats``).
        output_dir: reports go here; predictions under ``predictions/<subset>/<case_id>.nii.gz``.
        split: ``"testing"`` (held out, default), ``"validation"`` or ``"training"``.
        save_predictions: write every subset's prediction as a NIfTI label file.
        subsets: subset names to evaluate (default all 15, canonical order; all of the spec's for another spec).
        roi_size: sliding-window size; ``None`` uses the checkpoint's (recorded ``inference.roi_size``, else the
            training crop).
        overlap: sliding-window overlap; ``None`` uses the checkpoint's recorded one, else 1/3 (the reference
            recipe).
        sw_mode: window blending, ``"constant"`` (uniform averaging, the reference's) or ``"gaussian"``; ``None``:
            the checkpoint's, else ``"constant"``.
        hd95_method: ``"pooled"`` (legacy BraTS scoring, default) or ``"directed_max"`` (see
            :mod:`lckd_med.metrics.brats`).
        threshold: threshold of each region probability (the ``"threshold"`` decision; a softmax network's
            checkpoint decides by argmax, see :class:`~lckd_med.inference.Segmenter`).
        postprocess_min_et: ET post-processing threshold in 1 mm voxels (mm^3; peers' 500), scaled to each
            case's voxel size, reported beside the raw scores; 0 disables.
        postprocess: ``"none"`` or ``"reference"``: also score the LCKD reference's post-processing, reports under
            ``output_dir/postprocessed/`` (3-D BraTS only; see the module docstring).
        sw_average: what overlapping windows average, ``"logits"`` or ``"probabilities"`` (the reference's final
            inference); ``None``: the checkpoint's, else ``"logits"``.
        write_subset_dice: write the per-subset mean Dice to ``subset_dice.json`` beside ``model.pt`` so batch
            inference can tell users what to expect for the sequences they have.
        max_cases: evaluate only the first cases of the split (smoke runs).
        device: ``"auto"`` (CUDA when available) or a device name; ``amp``: bf16 autocast on CUDA.
        num_workers: loader processes preparing the next cases while one is swept (0: in the main process).
        modalities: the modality spec of the data and the checkpoint (``None`` = BraTS).
        overwrite: replace report files, a ``predictions/`` folder and a ``subset_dice.json`` that lckd_med did not
            write (by default they are refused before anything is predicted; see
            :class:`~lckd_med.utils.outputs.OwnedFiles`).
        png: also write ``png/<case_id>.png`` per case: three orthogonal slices through the tumour predicted from
            the largest evaluated subset the case has, on its T1ce (else FLAIR, T2, T1), labels overlaid (3-D BraTS).

    Prediction goes through :class:`~lckd_med.inference.Segmenter` (the checkpoint's normalisation, window, threshold
    and labels), the path ``lckd-med predict`` and batch inference take.

    Every case is checked before any prediction: its label (readable, 3-D, values of the label convention) and its
    sequences (each an MRI of a head, see :func:`lckd_med.data.validation.head_mri_problem`; no scan given twice, no
    two patients' files); a case that fails is left out with one warning naming the file.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        datalist: str | os.PathLike,
        output_dir: str | os.PathLike,
        split: str = "testing",
        save_predictions: bool = False,
        subsets: Sequence[str] | None = None,
        roi_size: Sequence[int] | None = None,
        overlap: float | None = None,
        threshold: float = 0.5,
        postprocess_min_et: int = 500,
        postprocess: str = "none",
        sw_average: str | None = None,
        sw_mode: str | None = None,
        hd95_method: str = "pooled",
        write_subset_dice: bool = True,
        max_cases: int | None = None,
        device: str = "auto",
        amp: bool = True,
        progress: bool = True,
        num_workers: int = 2,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
        overwrite: bool = False,
        png: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be 'training', 'validation' or 'testing', got {split!r}")
        self.spec = spec_of(modalities)
        subsets = list(self.spec.subset_names if subsets is None else subsets)
        if not subsets:
            raise ValueError("subsets must name at least one subset")
        for s in subsets:
            if "+".join(self.spec.parse_subset(s)) != s:
                raise ValueError(f"subset {s!r} is not a canonical name; use one of {self.spec.subset_names}")
        if overlap is not None and not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if sw_mode is not None and sw_mode not in BLEND_MODES:
            raise ValueError(f"sw_mode must be one of {BLEND_MODES}, got {sw_mode!r}")
        if hd95_method not in HD95_METHODS:
            raise ValueError(f"hd95_method must be one of {HD95_METHODS}, got {hd95_method!r}")
        if postprocess_min_et < 0:
            raise ValueError(f"postprocess_min_et must be >= 0, got {postprocess_min_et}")
        if postprocess not in POSTPROCESSINGS:
            raise ValueError(f"postprocess must be one of {POSTPROCESSINGS}, got {postprocess!r}")
        if postprocess == "reference" and self.spec.spatial_dims != 3:
            raise ValueError("postprocess='reference' post-processes 3-D BraTS label maps; use 'none'")
        if sw_average is not None and sw_average not in WINDOW_AVERAGES:
            raise ValueError(f"sw_average must be one of {WINDOW_AVERAGES}, got {sw_average!r}")
        if not isinstance(png, bool):
            raise TypeError(f"png must be a bool, got {png!r}")
        if png and self.spec != BRATS:
            raise ValueError("png=True draws 3-D BraTS cases; use png=False for other modality specs")
        self.png = png
        self.postprocess = postprocess
        self.sw_average = sw_average
        self.ckpt_path = Path(ckpt_dir) / CHECKPOINT_NAME
        self.datalist = Path(datalist)
        self.output_dir = Path(output_dir)
        self.split = split
        self.save_predictions = bool(save_predictions)
        self.subsets = subsets
        self.roi_size = None if roi_size is None else [int(v) for v in roi_size]
        self.overlap = overlap
        self.sw_mode = sw_mode
        self.hd95_method = hd95_method
        self.threshold = threshold
        self.postprocess_min_et = int(postprocess_min_et)
        self.write_subset_dice = write_subset_dice
        self.max_cases = max_cases
        self.device = resolve_device(device)
        self.amp = amp
        self.progress = progress
        self.num_workers = int(num_workers)
        self.overwrite = bool(overwrite)

    def _check_outputs(self) -> None:
        """Refuse, before any work, to replace files or folders in ``output_dir`` and beside ``model.pt`` that are
        not lckd_med's (with ``overwrite`` they are replaced).

        Raises:
            FileExistsError: naming the file and ``--overwrite True``.
        """
        flag = "--overwrite True"
        check_reports_writable(self.output_dir, self.overwrite, flag)
        owned = OwnedFiles(self.output_dir, self.overwrite, flag)
        folders = ["predictions"] + (["predictions_postprocessed"] if self.postprocess == "reference" else [])
        for folder in folders if self.save_predictions and not self.overwrite else []:
            foreign = owned.foreign_in_tree(folder)
            if foreign:
                raise FileExistsError(
                    f"{self.output_dir / folder} holds {len(foreign)} file(s) lckd_med did not write (e.g. "
                    f"{foreign[0]}); it was left untouched: move it away, choose another output_dir or pass {flag} "
                    "to replace it"
                )
        if self.postprocess == "reference":
            check_reports_writable(self.output_dir / POSTPROCESSED_DIR, self.overwrite, flag)
        if self.png and not self.overwrite:
            foreign = owned.foreign_in_tree(PNG_DIR)
            if foreign:
                raise FileExistsError(
                    f"{self.output_dir / PNG_DIR} holds {len(foreign)} file(s) lckd_med did not write (e.g. "
                    f"{foreign[0]}); it was left untouched: move it away, choose another output_dir or pass {flag} "
                    "to replace them"
                )
        if self.write_subset_dice:
            target = self.ckpt_path.with_name(SUBSET_DICE_NAME)
            if target.exists() and not _is_subset_dice_file(target):
                OwnedFiles(self.ckpt_path.parent, self.overwrite, flag).check(SUBSET_DICE_NAME)

    def _case_problems(self, entries: list[dict[str, Any]], conv: LabelConvention) -> dict[str, str]:
        """``case_id -> why it cannot be evaluated``, checked before anything is predicted: a label that cannot be
        scored, a sequence that cannot be an MRI of a head, one scan given twice or two patients' files (a datalist
        edited by hand, or files changed since it was made)."""
        bad: dict[str, str] = {}
        if self.spec.spatial_dims != 3:  # the NIfTI checks read 3-D volumes; other specs have their own loaders
            return bad
        for entry in entries:
            problems = [f"label {entry['label']}: {p}" for p in label_file_problems(entry["label"], conv)]
            if not problems:
                paths = {m: entry.get(m) for m in self.spec.names}
                problems = [f"{f}: {why}" for f, why in case_file_problems(paths)]
            for m in self.spec.names if not problems else ():
                if entry.get(m):
                    read = read_nifti(entry[m])
                    problems += [f"{m} file {entry[m]}: {p}" for p in read.problems]
            if problems:
                bad[entry["case_id"]] = problems[0]
        return bad

    def _case_subsets(self, entry: dict[str, Any]) -> list[str]:
        present = {m for m in self.spec.names if entry.get(m)}
        return [s for s in self.subsets if set(self.spec.parse_subset(s)) <= present]

    def run(self) -> pd.DataFrame:
        """Evaluate, write ``subset_metrics.csv``, ``subset_summary.{csv,md}``, the heat map; return the rows."""
        check_output_folder(self.output_dir, "output_dir")
        self._check_outputs()
        meta = datalist_meta(self.datalist)
        datalist_spec = spec_of(meta.get("modality_spec"))
        datalist_spec.check_same(self.spec, f"datalist {self.datalist}", f"the evaluator ({self.spec.name})")
        segmenter = Segmenter.from_checkpoint(
            self.ckpt_path,
            flag="ckpt_dir",
            device=self.device,
            amp=self.amp,
            roi_size=self.roi_size,
            overlap=self.overlap,
            threshold=self.threshold,
            label_convention=meta.get("label_convention"),
            mode=self.sw_mode,
            average=self.sw_average,
            modalities=self.spec,
        )
        conv = segmenter.convention
        entries = load_split(self.datalist, self.split, max_cases=self.max_cases)
        for entry in entries:  # case ids name prediction files: "../x" must not write outside output_dir
            check_case_id(str(entry.get("case_id", "")), f"datalist {self.datalist}")
        skipped: list[str] = []
        todo = []
        todo_entries: list[dict[str, Any]] = []
        labelled = [e for e in entries if e.get("label")]
        bad_cases = self._case_problems(labelled, conv)  # before 15 subsets are predicted for nothing
        for entry in entries:
            if not entry.get("label"):
                skipped.append(f"{entry['case_id']}: no label file")
            elif entry["case_id"] in bad_cases:
                skipped.append(f"{entry['case_id']}: {bad_cases[entry['case_id']]}")
            elif not self._case_subsets(entry):
                skipped.append(f"{entry['case_id']}: none of the requested subsets is available")
            else:
                todo.append({k: entry.get(k) for k in (*self.spec.names, "case_id")})
                todo_entries.append(entry)
        for why in skipped:  # once each, before the long part
            logger.warning("skipped %s", why)
        if not todo:
            reasons = "; ".join(skipped[:3])
            raise ValueError(f"no case of the {self.split!r} split of {self.datalist} can be evaluated ({reasons})")
        by_id = {e["case_id"]: e for e in entries}
        # workers load and preprocess the next cases while the current one is swept
        loader = DataLoader(
            Dataset(todo, segmenter.transforms), batch_size=1, num_workers=self.num_workers, collate_fn=_single
        )
        # predict into a fresh staging folder and score exactly that; it becomes predictions/ (replacing an
        # earlier run's, so no stale file is ever mistaken for this run's) or, without save_predictions, goes away
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_work_dirs(self.output_dir, _STAGE_PREFIX)
        stage = make_work_dir(self.output_dir, _STAGE_PREFIX)
        stage_pp = make_work_dir(self.output_dir, _STAGE_PREFIX) if self.postprocess == "reference" else None
        suffix = ".nii.gz" if self.save_predictions else ".nii"  # scratch files skip gzip: written once, read once
        t_start = time.perf_counter()
        try:
            for sample in progress_bar(loader, desc=f"evaluate {self.split}", total=len(todo), enabled=self.progress):
                self._predict_case(sample, by_id[sample["case_id"]], segmenter, stage, suffix, stage_pp)
            labels = {e["case_id"]: e["label"] for e in todo_entries}
            scores = score_folder(
                stage,
                labels,
                release=conv,
                postprocess_min_et=self.postprocess_min_et,
                progress=False,
                hd95_method=self.hd95_method,
                modalities=self.spec,
            )
            if stage_pp is not None:
                self._score_postprocessed(stage_pp, labels, conv)
            if self.save_predictions:
                owned = OwnedFiles(self.output_dir, self.overwrite, "--overwrite True")
                owned.remove_tree("predictions")  # only an earlier run's own files (checked before predicting)
                (stage / OWNER_MARKER).unlink()
                stage.rename(self.output_dir / "predictions")
                saved = [p for p in (self.output_dir / "predictions").rglob("*") if p.is_file()]
                if stage_pp is not None:
                    owned.remove_tree("predictions_postprocessed")
                    (stage_pp / OWNER_MARKER).unlink()
                    stage_pp.rename(self.output_dir / "predictions_postprocessed")
                    saved += [p for p in (self.output_dir / "predictions_postprocessed").rglob("*") if p.is_file()]
                owned.record(*(p.relative_to(self.output_dir) for p in saved))
        finally:
            for folder in (stage, stage_pp):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
        # case order of the split, then subset order: the table reads as before the predict/score split
        order = {cid: i for i, cid in enumerate(labels)}
        df = scores.metrics.assign(
            _c=scores.metrics["case_id"].map(order), _s=scores.metrics["subset"].map(self.spec.subset_names.index)
        )
        df = df.sort_values(["_c", "_s"], kind="stable").drop(columns=["_c", "_s"]).reset_index(drop=True)
        elapsed = time.perf_counter() - t_start
        n_cases = df["case_id"].nunique()
        caption = (
            f"{n_cases} case(s) of the {self.split} split of {self.datalist.name}; checkpoint at iteration "
            f"{segmenter.checkpoint.get('iteration', '?')}; {self.device.type.upper()}, {elapsed:.0f} s. Dice in %, HD95 in mm "
            f"(legacy BraTS rules for empty regions; HD95 {self.hd95_method}); windows blended {segmenter.mode}; "
            "ET post-processed: predicted ET < "
            f"{self.postprocess_min_et} mm^3 relabelled NCR."
            + (f" The LCKD reference post-processing is scored in {POSTPROCESSED_DIR}/." if stage_pp else "")
        )
        write_reports(
            df,
            self.output_dir,
            caption=caption,
            allow_partial=set(df["subset"]) != set(self.spec.subset_names),
            modalities=self.spec,
            overwrite=self.overwrite,
            flag="--overwrite True",
        )
        if self.write_subset_dice:
            self._write_subset_dice(segmenter, df)
        logger.info(
            "evaluated %d case(s) x %d subset(s) in %.1f s -> %s", n_cases, len(self.subsets), elapsed, self.output_dir
        )
        return df

    def _predict_case(
        self,
        sample: dict[str, Any],
        entry: dict[str, Any],
        segmenter: Segmenter,
        pred_root: Path,
        suffix: str,
        pp_root: Path | None = None,
    ) -> None:
        """Write ``pred_root/<subset>/<case_id><suffix>`` for every subset the case allows, on its input grid (and
        the reference post-processing of each to ``pp_root/<subset>/`` when given, the picture when ``png``)."""
        case_id = sample["case_id"]
        subsets = self._case_subsets(entry)
        labels, _ = segmenter.predict_sample(sample, subsets, progress=str(case_id) if self.progress else None)
        ref = _spatial_reference(nib.load(next(entry[m] for m in self.spec.names if entry.get(m))), labels.ndim - 1)
        conv = segmenter.convention
        t1ce = self._t1ce(entry, ref) if pp_root is not None and any("t1ce" in s.split("+") for s in subsets) else None
        for i, subset in enumerate(subsets):
            save_label_map(labels[i], ref, pred_root / subset / f"{case_id}{suffix}")
            if pp_root is not None:  # T1ce only for subsets that had it: the reference reads it from disk
                processed = reference_postprocess(
                    labels[i], t1ce if "t1ce" in subset.split("+") else None, conv, voxel_spacing(ref.affine)
                )
                save_label_map(processed, ref, pp_root / subset / f"{case_id}{suffix}")
        if self.png:
            self._save_png(entry, subsets, labels, ref, conv)

    def _save_png(
        self,
        entry: Mapping[str, Any],
        subsets: list[str],
        labels: np.ndarray,
        ref: nib.Nifti1Image,
        conv: LabelConvention,
    ) -> None:
        """``png/<case_id>.png``: the prediction of the largest subset on the case's T1ce (else FLAIR, T2, T1)."""
        best = max(range(len(subsets)), key=lambda i: (len(subsets[i].split("+")), -i))
        shown = next(m for m in REFERENCE_PRIORITY if entry.get(m))
        image = nib.load(entry[shown])
        rel = f"{PNG_DIR}/{entry['case_id']}.png"
        (self.output_dir / PNG_DIR).mkdir(parents=True, exist_ok=True)
        save_overlay(
            self.output_dir / rel,
            np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3]),
            labels[best],
            ref.affine,
            sequences=subsets[best].split("+"),
            background_name=shown,
            convention=conv,
            title=f"{entry['case_id']} ({self.split} split)",
        )
        OwnedFiles(self.output_dir, self.overwrite, "--overwrite True").record(rel)

    @staticmethod
    def _t1ce(entry: Mapping[str, Any], ref: nib.Nifti1Image) -> np.ndarray | None:
        """The case's raw T1ce when it lies on the prediction's grid (BraTS: always), else None (step 2 skipped)."""
        path = entry.get("t1ce")
        if not path:
            return None
        img = nib.load(path)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, 0.0, AFFINE_ATOL_MM):
            logger.warning("%s: T1ce not on the prediction grid; reference post-processing without k-means", path)
            return None
        return np.asarray(img.dataobj).reshape(img.shape[:3])

    def _score_postprocessed(self, stage_pp: Path, labels: Mapping[str, Any], conv: LabelConvention) -> None:
        """Score the post-processed predictions into ``output_dir/postprocessed/`` (reports as the raw ones)."""
        scores = score_folder(
            stage_pp,
            labels,
            output_dir=self.output_dir / POSTPROCESSED_DIR,
            release=conv,
            postprocess_min_et=0,
            progress=False,
            hd95_method=self.hd95_method,
            caption=(
                f"{len(labels)} case(s) of the {self.split} split after the LCKD reference post-processing "
                "(postprocess.py: small or low components removed, k-means NCR in oedema when T1ce is in the subset, "
                "ET < 500 mm^3 relabelled NCR). Dice in %, HD95 in mm (legacy BraTS rules)."
            ),
            modalities=self.spec,
        )
        for problem in scores.problems:
            logger.warning("post-processed scores: left out %s", problem)

    def _write_subset_dice(self, segmenter: Segmenter, df: pd.DataFrame) -> None:
        summary = summarize(df, allow_partial=True, modalities=self.spec)
        subset_dice = {}
        for _, row in summary.iterrows():
            name = row["subset"]
            if name in self.spec.subset_names and row["n_cases"] > 0:
                subset_dice[name] = {r: float(row[f"{r}_dice_mean"]) for r in REGIONS}
        source = {
            "split": self.split,
            "datalist": str(self.datalist),
            "n_cases": int(df["case_id"].nunique()),
            "iteration": int(segmenter.checkpoint.get("iteration", 0)),
            "weights_sha256": segmenter.weights_sha256,
        }
        payload = {"subset_dice": subset_dice, "source": source}
        write_text_atomic(self.ckpt_path.with_name(SUBSET_DICE_NAME), json.dumps(payload, indent=2) + "\n")
        OwnedFiles(self.ckpt_path.parent).record(SUBSET_DICE_NAME)


def _is_subset_dice_file(path: Path) -> bool:
    """``path`` is a ``subset_dice.json`` evaluation wrote (its own format, also from versions before ownership
    records): lckd_med's to replace."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"subset_dice", "source"} and isinstance(data["source"], dict)
