"""Lesion statistics of BraTS-layout cases: region volume fractions, per-sequence contrast, cases without ET.

These are the numbers that decide whether a missing-modality comparison on synthetic data means anything: how
large ET and TC are relative to WT (a tiny ET cannot be learned in a short budget, a huge one is unrealistic), how
bright each region is on each sequence relative to normal brain (which sequence carries which region), and how
many cases have no ET at all (empty regions score 1 or 0 by the legacy BraTS rules). ``docs/data.md`` lists the
synthetic generator's values beside the BraTS2018 figures.

Everything here takes arrays (NumPy only, no torch), so the same code measures the generator's cases in memory
and a real dataset's files loaded with nibabel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lckd_med.constants import MODALITIES, REGIONS, label_convention

__all__ = ["REFERENCE_TISSUE", "case_statistics", "summarize_statistics"]

#: Contrast is a region's mean intensity over the mean of the brain outside the tumour (normal-appearing brain).
REFERENCE_TISSUE = "normal-appearing brain (brain voxels outside WT)"


def case_statistics(
    seg: np.ndarray,
    images: Mapping[str, np.ndarray] | None = None,
    brain: np.ndarray | None = None,
    grade: str | None = None,
    release: int | str = 2018,
) -> dict[str, Any]:
    """Region volumes and contrasts of one case.

    Args:
        seg: label map (H, W, D) in the release's convention (0 background, NCR, ED, ET).
        images: modality key -> intensity array (H, W, D) of the same shape; optional (no contrasts without it).
        brain: bool (H, W, D) brain mask; default: voxels where any image is non-zero, else ``seg > 0`` only.
        grade: ``"HGG"``/``"LGG"`` or None, copied into the result.
        release: BraTS year, for the ET label (4 up to 2022, 3 from 2023).

    Returns:
        ``{"grade", "wt_voxels", "tc_wt", "et_wt", "has_et", "contrast": {region: {modality: ratio}}}``;
        ``tc_wt`` and ``et_wt`` are NaN when WT is empty, a contrast is NaN when its region or the reference
        tissue is empty.

    Raises:
        ValueError: a shape differs from ``seg``'s.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"seg must be a 3D label map (H, W, D), got shape {seg.shape}")
    images = dict(images or {})
    for key, img in images.items():
        if np.shape(img) != seg.shape:
            raise ValueError(f"image {key!r} has shape {np.shape(img)}, seg has {seg.shape}")
    conv = label_convention(release)
    masks = {region: np.isin(seg, labels) for region, labels in conv.region_labels.items()}
    wt = int(masks["WT"].sum())
    if brain is None:
        brain = np.zeros(seg.shape, bool) if not images else np.any([np.asarray(i) != 0 for i in images.values()], 0)
    elif np.shape(brain) != seg.shape:
        raise ValueError(f"brain has shape {np.shape(brain)}, seg has {seg.shape}")
    normal = np.asarray(brain, bool) & ~masks["WT"]
    contrast: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        contrast[region] = {}
        for key, img in images.items():
            arr = np.asarray(img, dtype=np.float64)
            ref = float(arr[normal].mean()) if normal.any() else float("nan")
            val = float(arr[masks[region]].mean()) if masks[region].any() else float("nan")
            contrast[region][key] = val / ref if ref > 0 else float("nan")
    return {
        "grade": grade,
        "wt_voxels": wt,
        "tc_wt": float(masks["TC"].sum() / wt) if wt else float("nan"),
        "et_wt": float(masks["ET"].sum() / wt) if wt else float("nan"),
        "has_et": bool(masks["ET"].any()),
        "contrast": contrast,
    }


def summarize_statistics(
    cases: Iterable[Mapping[str, Any]], modalities: Sequence[str] = MODALITIES
) -> dict[str, dict[str, Any]]:
    """Per grade (and ``"all"``): case count, mean and median TC/WT and ET/WT, share without ET, mean contrasts.

    Args:
        cases: :func:`case_statistics` results.
        modalities: the sequences whose contrasts are averaged.

    Returns:
        group -> ``{"cases", "tc_wt_mean", "tc_wt_median", "et_wt_mean", "et_wt_median", "no_et_share",
        "contrast": {region: {modality: mean ratio}}}``; groups are ``"all"`` and each grade present.

    Raises:
        ValueError: no cases.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("need at least one case")
    groups: dict[str, list[Mapping[str, Any]]] = {"all": cases}
    for case in cases:
        if case.get("grade"):
            groups.setdefault(str(case["grade"]), []).append(case)
    out: dict[str, dict[str, Any]] = {}
    for group, members in groups.items():
        tc = np.array([c["tc_wt"] for c in members], dtype=float)
        et = np.array([c["et_wt"] for c in members], dtype=float)

        def stat(fn: Any, values: np.ndarray) -> float:
            finite = values[np.isfinite(values)]
            return float(fn(finite)) if finite.size else float("nan")

        contrast = {
            region: {
                mod: stat(np.mean, np.array([c["contrast"].get(region, {}).get(mod, np.nan) for c in members]))
                for mod in modalities
            }
            for region in REGIONS
        }
        out[group] = {
            "cases": len(members),
            "tc_wt_mean": stat(np.mean, tc),
            "tc_wt_median": stat(np.median, tc),
            "et_wt_mean": stat(np.mean, et),
            "et_wt_median": stat(np.median, et),
            "no_et_share": float(np.mean([not c["has_et"] for c in members])),
            "contrast": contrast,
        }
    return out
