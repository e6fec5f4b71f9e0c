"""Check that the sequences of one case are readable 3D NIfTI volumes on one voxel grid, and align near misses.

The network stacks the sequences of a case voxel by voxel, so they must share one grid (shape and affine). Scans
that users bring often do not quite: a sequence exported with a slightly different field of view or voxel size, a
header rounded differently. :func:`check_and_align` accepts such near misses by resampling them onto one
*reference* sequence and refuses everything else with a message naming the files and the difference.

Reference sequence: the first present of ``t1ce, flair, t2, t1`` (:data:`REFERENCE_PRIORITY`): T1ce carries the
enhancing tumour and is the sequence most often acquired at the highest resolution; FLAIR is the next most
informative for the whole tumour.

Rule for "close" grids (all must hold between a sequence and the reference):

* the same axis orientation codes (``nibabel.aff2axcodes``, e.g. ``("L", "P", "S")`` for BraTS files);
* voxel sizes within :data:`SPACING_RTOL` (5 %) per axis, relative to the reference;
* the physical centres of the two fields of view, or their origins (world position of voxel ``(0, 0, 0)``),
  within ``tolerance_mm`` (default :data:`CENTRE_TOLERANCE_MM`, 3 mm).

Grids whose shapes agree and whose affines agree within :data:`AFFINE_ATOL` are identical and left alone.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from lckd_med.constants import MODALITIES
from lckd_med.data.validation import check_normalisable, check_volume_header

__all__ = [
    "REFERENCE_PRIORITY",
    "AFFINE_ATOL",
    "SPACING_RTOL",
    "CENTRE_TOLERANCE_MM",
    "GeometryError",
    "VolumeGeometry",
    "read_volume",
    "reference_modality",
    "compare_geometry",
    "check_and_align",
]

#: Order in which the reference sequence (the grid every other sequence is resampled onto) is chosen.
REFERENCE_PRIORITY: tuple[str, ...] = ("t1ce", "flair", "t2", "t1")
#: Two affines within this absolute tolerance (mm, per entry) describe the same grid.
AFFINE_ATOL: float = 1e-3
#: Largest relative voxel-size difference per axis for a grid to count as close.
SPACING_RTOL: float = 0.05
#: Largest distance (mm) between field-of-view centres or origins for a grid to count as close.
CENTRE_TOLERANCE_MM: float = 3.0


_NOISE_FRACTION = 1e-5


class GeometryError(ValueError):
    """A sequence file is unreadable or invalid, or the sequences of a case are on incompatible grids."""


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of one 3D volume.

    Attributes:
        path: the file.
        shape: spatial shape ``(H, W, D)``.
        affine: ``(4, 4)`` voxel -> world (mm) matrix as nibabel reads it.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Axis orientation codes, e.g. ``("L", "P", "S")``."""
        return tuple(nib.aff2axcodes(self.affine))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along each array axis, ``(3,)``."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of voxel ``(0, 0, 0)``, ``(3,)``."""
        return self.affine[:3, 3].copy()

    @property
    def centre(self) -> np.ndarray:
        """World position (mm) of the centre of the field of view, ``(3,)``."""
        mid = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        return self.affine[:3, :3] @ mid + self.affine[:3, 3]

    def describe(self) -> str:
        """One-line summary: shape, orientation, voxel size and origin."""
        sp = ",".join(f"{v:.3g}" for v in self.spacing)
        org = ",".join(f"{v:.1f}" for v in self.origin)
        return f"shape {self.shape}, orientation {''.join(self.axcodes)}, voxel ({sp}) mm, origin ({org}) mm"


def _label(modality: str | None, path: Path) -> str:
    return f"{modality} file {path}" if modality else f"file {path}"


def read_volume(path: str | os.PathLike, modality: str | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read one NIfTI volume and check it can be segmented.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        modality: modality key, used in error messages only.

    Returns:
        ``(image, data)``: the nibabel image and its voxels as float32 ``(H, W, D)`` (a trailing singleton 4th
        axis is dropped).

    Raises:
        GeometryError: missing, unreadable, corrupt or non-NIfTI file; not a single 3D volume; NaN or infinite
        voxels (counted); all voxels zero.
    """
    path = Path(path)
    what = _label(modality, path)
    if not path.is_file():
        raise GeometryError(f"{what} does not exist")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises several types for unreadable / non-image files
        raise GeometryError(f"{what} cannot be read as NIfTI ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise GeometryError(f"{what} is not a NIfTI image (nibabel read it as {type(img).__name__})")
    check_volume_header(img, path)  # implausible size or NaN affine: refused before any voxel is read
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise GeometryError(f"{what} is not a single 3D volume (shape {shape}); give one 3D volume per sequence file")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])
    except Exception as e:  # truncated or corrupt gzip streams surface here, not at nib.load
        raise GeometryError(f"{what} is corrupt: its voxel data cannot be read ({type(e).__name__}: {e})") from e
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    if n_nan or n_inf:
        raise GeometryError(
            f"{what} has {n_nan} NaN and {n_inf} infinite voxel(s) out of {data.size}; fix or leave out this file"
        )
    if not data.any():
        raise GeometryError(f"{what} holds only zeros; leave it out if the sequence was not acquired")
    check_normalisable(data, path)  # huge finite intensities overflow the z-score into an all-zero "ok" result
    return img, data


def reference_modality(modalities: Mapping[str, object] | list[str] | tuple[str, ...]) -> str:
    """The reference sequence among the present ``modalities``: first of :data:`REFERENCE_PRIORITY`.

    Raises:
        GeometryError: no known modality present.
    """
    present = [m for m in modalities if not isinstance(modalities, Mapping) or modalities[m] is not None]
    for m in REFERENCE_PRIORITY:
        if m in present:
            return m
    raise GeometryError(f"no sequences: expected at least one of {MODALITIES}")


def compare_geometry(
    moving: VolumeGeometry,
    reference: VolumeGeometry,
    atol: float = AFFINE_ATOL,
    spacing_rtol: float = SPACING_RTOL,
    tolerance_mm: float = CENTRE_TOLERANCE_MM,
) -> tuple[str, str]:
    """Classify the grid of ``moving`` against ``reference``.

    Returns:
        ``(verdict, reason)`` with verdict ``"same"`` (nothing to do), ``"close"`` (resample, see the module rule)
        or ``"far"`` (refuse); ``reason`` describes the difference ("" when the same).
    """
    same_shape = moving.shape == reference.shape
    same_affine = bool(np.allclose(moving.affine, reference.affine, rtol=0.0, atol=atol))
    if same_shape and same_affine:
        return "same", ""
    diffs = []
    if not same_shape:
        diffs.append(f"shape {moving.shape} vs {reference.shape}")
    if not same_affine:
        delta = float(np.abs(moving.affine - reference.affine).max())
        diffs.append(f"affines differ by up to {delta:.4g}")
    problems = []
    if moving.axcodes != reference.axcodes:
        problems.append(f"orientation {''.join(moving.axcodes)} vs {''.join(reference.axcodes)}")
    rel = np.abs(moving.spacing - reference.spacing) / reference.spacing
    if bool((rel > spacing_rtol).any()):
        problems.append(
            f"voxel size {np.round(moving.spacing, 3).tolist()} vs {np.round(reference.spacing, 3).tolist()} mm "
            f"(more than {spacing_rtol:.0%} apart)"
        )
    d_centre = float(np.linalg.norm(moving.centre - reference.centre))
    d_origin = float(np.linalg.norm(moving.origin - reference.origin))
    if min(d_centre, d_origin) > tolerance_mm:
        problems.append(
            f"field-of-view centres {d_centre:.1f} mm and origins {d_origin:.1f} mm apart "
            f"(more than {tolerance_mm:g} mm)"
        )
    if problems:
        return "far", "; ".join(diffs + problems)
    return "close", "; ".join(diffs)


def _write_like(data: np.ndarray, reference: nib.Nifti1Image, path: Path) -> None:
    """Write float32 ``data`` on the reference grid, copying its qform/sform and their codes."""
    out = nib.Nifti1Image(data.astype(np.float32, copy=False), reference.affine)
    q, q_code = reference.header.get_qform(coded=True)
    s, s_code = reference.header.get_sform(coded=True)
    out.header.set_qform(q, int(q_code) if q is not None else None)
    out.header.set_sform(s, int(s_code) if s is not None else None)
    out.header.set_xyzt_units(*reference.header.get_xyzt_units())
    nib.save(out, path)


def check_and_align(
    paths: Mapping[str, str | os.PathLike | None],
    work_dir: str | os.PathLike | None = None,
    tolerance_mm: float = CENTRE_TOLERANCE_MM,
    spacing_rtol: float = SPACING_RTOL,
    atol: float = AFFINE_ATOL,
) -> tuple[dict[str, Path | None], list[str]]:
    """Validate the sequence files of one case and put them on one grid.

    Every present file is read (see :func:`read_volume`). Sequences on the reference grid are returned unchanged;
    sequences on a close grid (see the module docstring) are resampled onto it with MONAI ``ResampleToMatch``
    (trilinear, zero outside the source field of view) and written as float32 NIfTI files in ``work_dir``.

    Args:
        paths: modality key (from ``MODALITIES``) -> file, or None when the sequence is missing.
        work_dir: folder for resampled files; the caller deletes it. None creates one with
            :func:`tempfile.mkdtemp` only when something is resampled (its path is the parent of the resampled
            files and is named in the notes).
        tolerance_mm, spacing_rtol, atol: see :func:`compare_geometry`.

    Returns:
        ``(aligned, notes)``: the same keys mapped to files on one grid (None kept for missing sequences), and
        human-readable notes such as ``"resampled t2 onto t1ce grid (affines differ by up to 0.5)"``.

    Raises:
        GeometryError: unknown modality key, no sequence, a bad file, or grids too far apart (the message names
            the files, both grids and the difference).
    """
    unknown = [k for k in paths if k not in MODALITIES]
    if unknown:
        raise GeometryError(f"unknown modality keys {unknown}; expected keys from {MODALITIES}")
    present = {m: Path(p) for m, p in paths.items() if p is not None and str(p) != ""}
    ref_mod = reference_modality(list(present))

    loaded: dict[str, tuple[nib.Nifti1Image, np.ndarray]] = {}
    for m in MODALITIES:
        if m in present:
            loaded[m] = read_volume(present[m], m)

    def geometry(m: str) -> VolumeGeometry:
        img, data = loaded[m]
        return VolumeGeometry(present[m], tuple(data.shape), np.asarray(img.affine, dtype=float))

    ref_geom = geometry(ref_mod)
    verdicts = {m: compare_geometry(geometry(m), ref_geom, atol, spacing_rtol, tolerance_mm) for m in loaded}
    far = {m: reason for m, (verdict, reason) in verdicts.items() if verdict == "far"}
    if far:
        lines = [
            f"{m} file {present[m]} ({geometry(m).describe()}) vs reference {ref_mod} file {present[ref_mod]} "
            f"({ref_geom.describe()}): {reason}"
            for m, reason in far.items()
        ]
        raise GeometryError("sequences are not on one voxel grid and too far apart to resample: " + " | ".join(lines))

    aligned: dict[str, Path | None] = {m: (present.get(m)) for m in paths}
    notes: list[str] = []
    close = [m for m, (verdict, _) in verdicts.items() if verdict == "close"]
    if not close:
        return aligned, notes

    out_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="lckd_align_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_img, ref_data = loaded[ref_mod]
    dst = MetaTensor(torch.zeros((1, *ref_data.shape)), affine=torch.as_tensor(ref_geom.affine))
    resampler = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=np.float32)
    for m in close:
        img, data = loaded[m]
        src = MetaTensor(torch.from_numpy(data[None]), affine=torch.as_tensor(geometry(m).affine))
        out = np.asarray(resampler(src, dst).detach().cpu().numpy()[0], dtype=np.float32)
        # grid_sample's float32 coordinates leave ~1e-7-weighted bleed into background voxels, which would widen
        # the brain box (voxels > 0) that the pipeline crops to: zero what is rounding noise
        out[np.abs(out) < _NOISE_FRACTION * float(np.abs(data).max())] = 0.0
        target = out_dir / f"{m}_on_{ref_mod}_grid.nii.gz"
        _write_like(out, ref_img, target)
        aligned[m] = target
        notes.append(f"resampled {m} onto {ref_mod} grid ({verdicts[m][1]}; files in {out_dir})")
    return aligned, notes
