"""Score a folder of predicted label maps against ground truth: the per-subset reports of the evaluate bundle.

Input:

* ``pred_dir``: ``<case_id>.nii.gz`` (or ``.nii``) label maps, e.g. the output of batch inference or
  ``lckd-med predict``, or any other tool's, in the labels of one BraTS convention. When batch inference's
  ``inference_report.csv`` sits beside them, each case is reported under the subset of sequences it was
  segmented from (its ``modalities`` column); otherwise under ``subset`` (default all four). Sub-folders named
  after a subset (the evaluate bundle's ``predictions/<subset>/<case_id>.nii.gz``) are scored under that subset.
* ``labels``: a ``case_id -> file`` mapping (what evaluation passes, from its datalist), a BraTS dataset folder in any layout :mod:`lckd_med.data.layouts` discovers (the segmentation of each
  case), or a plain folder of ``<case_id>.nii.gz`` / ``<case_id>_seg.nii.gz`` / ``<case_id>-seg.nii.gz`` files.

Each prediction must overlay its label (same shape, affines within :data:`AFFINE_ATOL_MM`). Metrics are
:func:`lckd_med.metrics.brats.case_region_metrics` (legacy BraTS empty-region rules, HD95 with the label's voxel
size), plus ET post-processing as in the evaluate bundle; tables and the heat map are
:func:`lckd_med.reports.subset_report.write_reports`. A case that cannot be scored is listed in
:attr:`FolderScores.problems` and never stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lckd_med.constants import (
    AFFINE_ATOL_MM,
    ET_MIN_VOXELS,
    SUBSET_NAMES,
    LabelConvention,
    label_convention,
)
from lckd_med.data.layouts import LayoutError, discover_cases
from lckd_med.data.naming import nifti_stem
from lckd_med.metrics.brats import HD95_METHODS, case_region_metrics, postprocess_et, region_masks_from_labels
from lckd_med.modalities import BRATS, ModalitySpec
from lckd_med.reports.subset_report import check_reports_writable, rows_from_case_metrics, write_reports
from lckd_med.utils.checks import non_negative_int
from lckd_med.utils.progress import progress_bar

__all__ = [
    "AFFINE_ATOL_MM",
    "INFERENCE_REPORT",
    "FolderScores",
    "find_predictions",
    "find_labels",
    "score_folder",
    "voxel_spacing",
]

logger = logging.getLogger(__name__)

#: Report written by batch inference beside its label maps (gives each case's subset).
INFERENCE_REPORT = "inference_report.csv"
_LABEL_SUFFIXES = ("", "_seg", "-seg")


@dataclass(frozen=True)
class FolderScores:
    """What :func:`score_folder` did.

    Attributes:
        metrics: long table ``case_id, subset, region, dice, hd95, dice_pp, hd95_pp`` (three rows per case).
        problems: ``"<case_id>: reason"`` for every prediction or label left out.
        reports: report name -> file written (empty when no ``output_dir`` was given).
    """

    metrics: pd.DataFrame
    problems: tuple[str, ...]
    reports: dict[str, Path]


def _stem(name: str) -> str | None:
    return None if name.startswith(".") else nifti_stem(name)


def find_predictions(pred_dir: str | os.PathLike) -> dict[str, Path]:
    """``case_id -> file`` of the label maps directly in ``pred_dir`` (``.nii.gz`` preferred over ``.nii``).

    Raises:
        FileNotFoundError: ``pred_dir`` is not a folder.
    """
    root = Path(pred_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"prediction folder {root} does not exist or is not a folder")
    out: dict[str, Path] = {}
    for f in sorted(root.iterdir(), key=lambda p: (not p.name.lower().endswith(".nii.gz"), p.name)):
        stem = _stem(f.name)
        if f.is_file() and stem is not None and stem not in out:
            out[stem] = f
    return out


def find_labels(labels: str | os.PathLike) -> tuple[dict[str, Path], LabelConvention | None]:
    """``case_id -> segmentation file`` and the dataset's label convention (None when not known).

    A BraTS dataset folder (any layout) gives each discovered case's segmentation and the release's convention;
    any other folder is read as flat ``<case_id>[_seg|-seg].nii.gz`` files.

    Raises:
        FileNotFoundError: ``labels`` is not a folder.
    """
    root = Path(labels)
    if not root.is_dir():
        raise FileNotFoundError(f"label folder {root} does not exist or is not a folder")
    try:
        found = discover_cases(root)
    except LayoutError:
        found = None
    if found is not None and any(c.label is not None for c in found.cases):
        return {c.case_id: c.label for c in found.cases if c.label is not None}, found.convention
    out: dict[str, Path] = {}
    for f in sorted(root.iterdir(), key=lambda p: (not p.name.lower().endswith(".nii.gz"), p.name)):
        stem = _stem(f.name)
        if not f.is_file() or stem is None:
            continue
        for suffix in sorted(_LABEL_SUFFIXES, key=len, reverse=True):
            if suffix and stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        out.setdefault(stem, f)
    return out, None


def _case_subsets(pred_dir: Path, default: str, names: tuple[str, ...] = SUBSET_NAMES) -> dict[str, str]:
    report = pred_dir / INFERENCE_REPORT
    if not report.is_file():
        return {}
    df = pd.read_csv(report, dtype=str, keep_default_na=False)
    if not {"case_id", "modalities"} <= set(df.columns):
        return {}
    return {r.case_id: r.modalities for r in df.itertuples() if r.modalities in names}


def _convention_of(values: set[int], given: LabelConvention | None) -> LabelConvention:
    if given is not None:
        return given
    # ET is the only label that differs between conventions (4 up to 2022, 3 from 2023)
    return label_convention(2023 if 3 in values and 4 not in values else 2018)


def _prediction_sets(
    pred_dir: Path, default: str, names: tuple[str, ...] = SUBSET_NAMES
) -> list[tuple[str | None, Path]]:
    """``(subset or None, folder)``: ``pred_dir`` itself (subset from the report or ``default``) and every
    sub-folder named after a subset, as the evaluate bundle's ``predictions/<subset>/`` layout."""
    sets: list[tuple[str | None, Path]] = [(None, pred_dir)]
    sets += [(d.name, d) for d in sorted(pred_dir.iterdir()) if d.is_dir() and d.name in names]
    return sets


def score_folder(
    pred_dir: str | os.PathLike,
    labels: str | os.PathLike | Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    release: int | str | LabelConvention | None = None,
    postprocess_min_et: int = ET_MIN_VOXELS,
    progress: bool = True,
    hd95_method: str = "pooled",
    caption: str | None = None,
    modalities: ModalitySpec = BRATS,
    overwrite: bool = False,
) -> FolderScores:
    """Score every prediction of ``pred_dir`` that has a label (see the module docstring) and write the reports.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` label maps, and/or of sub-folders named after subsets
            (``flair+t1ce/<case_id>.nii.gz``, the evaluate bundle's ``predictions/`` layout), each scored under
            its folder's subset.
        labels: BraTS dataset folder, folder of ``<case_id>[_seg].nii.gz`` label files, or ``case_id -> file``.
        output_dir: where ``subset_metrics.csv``, ``subset_summary.{csv,md}`` and the heat map go; None writes
            nothing.
        subset: subset the predictions were made from (canonical name such as ``"t1ce+t2"``), used for cases
            without a row in ``inference_report.csv``; default all four sequences.
        release: BraTS year (2023+: ET = 3) or label convention of the labels; None takes the dataset's, else
            reads the label values.
        postprocess_min_et: ET post-processing threshold in 1 mm voxels (mm^3), scaled to each case's voxel
            size and reported in the ``*_pp`` columns; 0 disables it (no ``*_pp`` columns).
        progress: progress bar over cases (see :mod:`lckd_med.utils.progress`).
        hd95_method: ``"pooled"`` (legacy BraTS, default) or ``"directed_max"`` (:mod:`lckd_med.metrics.brats`).
        caption: caption of the Markdown table (default: what was scored against what).
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the data: its subset names are the valid
            sub-folder names and report rows, its ``spatial_dims`` the dimensions of the label maps (2-D NIfTI
            files for a 2-D spec). Default BraTS.
        overwrite: replace report files in ``output_dir`` that lckd_med did not write (by default they are refused
            before anything is scored; see :func:`~lckd_med.reports.subset_report.check_reports_writable`).

    Raises:
        FileNotFoundError: a folder is missing.
        FileExistsError: a report file in ``output_dir`` is the user's (nothing is written).
        ValueError: bad ``subset``, ``release`` or ``hd95_method``; no prediction could be scored (the message
            lists why).
    """
    names = modalities.subset_names
    default = modalities.full_subset if subset is None else subset
    if default not in names:
        raise ValueError(f"unknown subset {subset!r}; expected one of {names}")
    non_negative_int(postprocess_min_et, "postprocess_min_et")
    if hd95_method not in HD95_METHODS:
        raise ValueError(f"hd95_method must be one of {HD95_METHODS}, got {hd95_method!r}")
    given = label_convention(release) if release is not None else None
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_root} does not exist or is not a folder")
    if output_dir is not None:
        check_reports_writable(output_dir, overwrite)
    if isinstance(labels, Mapping):
        gts, dataset_convention = {str(k): Path(v) for k, v in labels.items()}, None
    else:
        gts, dataset_convention = find_labels(labels)
    given = given or dataset_convention
    problems: list[str] = []
    todo: list[tuple[str, str, Path]] = []  # (case_id, subset, prediction file)
    for folder_subset, folder in _prediction_sets(pred_root, default, names):
        preds = find_predictions(folder)
        subsets = _case_subsets(folder, default, names) if folder_subset is None else {}
        problems += [
            f"{cid}: no label in {labels if not isinstance(labels, Mapping) else 'the label list'}"
            for cid in preds
            if cid not in gts
        ]
        todo += [(cid, folder_subset or subsets.get(cid, default), f) for cid, f in preds.items() if cid in gts]
    scored = {cid for cid, _, _ in todo}
    problems += [f"{cid}: no prediction in {pred_dir}" for cid in gts if cid not in scored]
    rows: list[dict[str, object]] = []
    for cid, case_subset, pred_file in progress_bar(todo, desc="score", enabled=progress):
        try:
            rows.extend(
                _score_case(cid, case_subset, pred_file, gts[cid], given, postprocess_min_et, hd95_method, modalities)
            )
        except Exception as e:  # one unreadable or mismatched case must not stop the scoring
            problems.append(f"{cid}: {e}")  # the file path names the subset folder
    for p in problems:
        logger.warning("left out %s", p)
    if not rows:
        raise ValueError(
            f"no prediction in {pred_dir} could be scored against {labels}: " + ("; ".join(problems) or "no files")
        )
    df = pd.DataFrame(rows)
    reports: dict[str, Path] = {}
    if output_dir is not None:
        n = df["case_id"].nunique()
        if caption is None:
            caption = (
                f"{n} case(s) of {pred_root.name} scored against "
                f"{'the label list' if isinstance(labels, Mapping) else Path(labels).name}. Dice in %, HD95 in mm "
                f"(legacy BraTS rules for empty regions; HD95 {hd95_method}); ET post-processed: predicted ET < "
                f"{postprocess_min_et} mm^3 relabelled NCR."
            )
        reports = write_reports(
            df,
            output_dir,
            caption=caption,
            allow_partial=set(df["subset"]) != set(names),
            modalities=modalities,
            overwrite=overwrite,
        )
    return FolderScores(metrics=df, problems=tuple(problems), reports=reports)


def _score_case(
    cid: str,
    subset: str,
    pred_file: Path,
    label_file: Path,
    given: LabelConvention | None,
    postprocess_min_et: int,
    hd95_method: str,
    modalities: ModalitySpec = BRATS,
) -> list[dict[str, object]]:
    """Rows of one prediction file scored against its label file (legacy BraTS rules, label's voxel size)."""
    p_img, g_img = nib.load(pred_file), nib.load(label_file)
    nd = modalities.spatial_dims
    if p_img.shape[:nd] != g_img.shape[:nd] or not np.allclose(p_img.affine, g_img.affine, 0.0, AFFINE_ATOL_MM):
        raise ValueError(
            f"prediction {pred_file} (shape {p_img.shape}) does not overlay label {label_file} "
            f"(shape {g_img.shape}): different grid"
        )
    p_arr = np.asarray(p_img.dataobj).reshape(p_img.shape[:nd])
    g_arr = np.asarray(g_img.dataobj).reshape(g_img.shape[:nd])
    conv = _convention_of(set(np.unique(p_arr).tolist()) | set(np.unique(g_arr).tolist()), given)
    pred, gt = region_masks_from_labels(p_arr, conv), region_masks_from_labels(g_arr, conv)
    spacing = voxel_spacing(g_img.affine)[:nd]
    metrics = case_region_metrics(pred, gt, spacing, hd95_method)
    metrics_pp = None
    if postprocess_min_et > 0:
        # the threshold is in 1 mm voxels: keep the same physical size on coarser grids
        processed = postprocess_et(pred, max(1, round(postprocess_min_et / float(np.prod(spacing)))))
        # most cases keep their ET unchanged: reuse the scores instead of recomputing HD95
        unchanged = np.array_equal(processed, pred)
        metrics_pp = metrics if unchanged else case_region_metrics(processed, gt, spacing, hd95_method)
    return rows_from_case_metrics(cid, subset, metrics, metrics_pp, modalities)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the three array axes of an affine."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
