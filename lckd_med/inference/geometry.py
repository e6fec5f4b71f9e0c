"""Check that the sequences of one case are readable 3D NIfTI volumes, and put them on one voxel grid.

The network stacks the sequences of a case voxel by voxel, so they must share one grid (shape and affine). Scans
that users bring often do not: a sequence stored in another orientation (RAS instead of BraTS's LPS), acquired at
another voxel size (1 x 1 x 1.5 mm), exported with a different field of view or a header rounded differently.
Co-registration is a fact about *world* space (millimetres in scanner coordinates), not about voxel grids, so
:func:`check_and_align` resamples every sequence whose field of view overlaps the reference sequence's in world
space onto the reference grid, and refuses only sequences whose geometry is unrelated (fields of view that barely
or never meet), with a message naming the files and the difference.

Reference sequence, by default: the first present of ``t1ce, flair, t2, t1`` (:data:`REFERENCE_PRIORITY`): T1ce
carries the enhancing tumour and is the sequence most often acquired at the highest resolution; FLAIR is the next
most informative for the whole tumour. ``grid`` chooses another (a sequence, or the coarsest / finest voxels:
:func:`choose_reference`); a 1 mm T1ce with a 2 mm T2 on the coarsest grid has 8 times fewer voxels to segment.
Outputs are written on the reference grid.

Rule (:func:`compare_geometry`), with the field of view of a volume taken as the world-space axis-aligned box
around its voxels (voxel edges, i.e. centres +- half a voxel, mapped through the affine):

* ``"same"``: equal shapes and affines within :data:`AFFINE_ATOL` -- nothing to do;
* ``"close"``: the two boxes overlap, after growing the reference's by ``tolerance_mm`` (default
  :data:`CENTRE_TOLERANCE_MM`, 3 mm) on every side, over at least :data:`MIN_OVERLAP_FRACTION` (80 %) of the
  smaller box's volume -- resampled, whatever the orientation, voxel size or shape;
* ``"far"``: anything else -- refused.

Resampling is MONAI ``ResampleToMatch``, which maps voxels through both affines (orientation flips and
permutations included), trilinear, zero outside the source field of view. A re-oriented copy of the reference
(same world grid, other axis order or direction) is reproduced exactly.
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
from monai.transforms import Orientation, ResampleToMatch

from lckd_med.constants import AFFINE_ATOL_MM, GRID_RULES, MODALITIES
from lckd_med.data.volume import read_nifti

__all__ = [
    "REFERENCE_PRIORITY",
    "AFFINE_ATOL",
    "CENTRE_TOLERANCE_MM",
    "MIN_OVERLAP_FRACTION",
    "GeometryError",
    "VolumeGeometry",
    "read_volume",
    "reference_modality",
    "overlap_fraction",
    "compare_geometry",
    "check_and_align",
    "GRID_RULES",
    "Alignment",
    "align_volumes",
    "choose_reference",
    "image_like",
    "voxel_volume",
]

#: Order in which the reference sequence (the grid every other sequence is resampled onto) is chosen.
REFERENCE_PRIORITY: tuple[str, ...] = ("t1ce", "flair", "t2", "t1")
#: Two affines within this absolute tolerance (mm, per entry) describe the same grid (the project's one value).
AFFINE_ATOL: float = AFFINE_ATOL_MM
#: Slack (mm) added on every side of the reference field of view before measuring the overlap, so fields of view
#: that differ by a few millimetres (a rounded header, a slice more or less) count as fully overlapping.
CENTRE_TOLERANCE_MM: float = 3.0
#: Smallest share of the smaller field of view (by volume) that must lie inside the other for a grid to be
#: resampled: co-registered sequences of one head overlap almost entirely, unrelated scans barely or not at all.
MIN_OVERLAP_FRACTION: float = 0.8


_NOISE_FRACTION = 1e-5
# nibabel's world convention (RAS+): the affines handed to MONAI here are nibabel's
_NIBABEL_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


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

    def world_box(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space axis-aligned box ``(low, high)``, each ``(3,)`` mm, around the voxels (centres +- half a
        voxel), whatever the orientation of the grid."""
        corners = np.array(
            [
                [i, j, k]
                for i in (-0.5, self.shape[0] - 0.5)
                for j in (-0.5, self.shape[1] - 0.5)
                for k in (-0.5, self.shape[2] - 0.5)
            ]
        )
        world = corners @ self.affine[:3, :3].T + self.affine[:3, 3]
        return world.min(axis=0), world.max(axis=0)

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
        GeometryError: the first problem :func:`lckd_med.data.volume.read_nifti` lists: missing, unreadable,
        corrupt or non-NIfTI file; implausible header (a size beyond the file or the memory, a singular affine,
        complex data); not a single 3D volume; NaN or infinite voxels (counted); all voxels zero; intensities
        overflowing the z-score; content that cannot be an MRI of a head.
    """
    path = Path(path)
    read = read_nifti(path)  # the one reader: header guards, shape, voxels, intensity checks
    if read.problems:
        raise GeometryError(f"{_label(modality, path)}: {read.problems[0]}")
    return read.image, np.asarray(read.data, dtype=np.float32)


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


def overlap_fraction(moving: VolumeGeometry, reference: VolumeGeometry, tolerance_mm: float = 0.0) -> float:
    """Share of the smaller world-space field of view that lies inside the other, in ``[0, 1]``.

    The reference box is grown by ``tolerance_mm`` on every side first (see :attr:`VolumeGeometry.world_box`).
    """
    m_lo, m_hi = moving.world_box()
    r_lo, r_hi = reference.world_box()
    inter = np.clip(np.minimum(m_hi, r_hi + tolerance_mm) - np.maximum(m_lo, r_lo - tolerance_mm), 0.0, None)
    smaller = min(float(np.prod(m_hi - m_lo)), float(np.prod(r_hi - r_lo)))
    return float(min(1.0, np.prod(inter) / smaller)) if smaller > 0 else 0.0


def compare_geometry(
    moving: VolumeGeometry,
    reference: VolumeGeometry,
    atol: float = AFFINE_ATOL,
    tolerance_mm: float = CENTRE_TOLERANCE_MM,
    min_overlap: float = MIN_OVERLAP_FRACTION,
) -> tuple[str, str]:
    """Classify the grid of ``moving`` against ``reference`` (see the module rule).

    Args:
        moving, reference: the two grids.
        atol: affine tolerance (mm per entry) of ``"same"``.
        tolerance_mm: slack (mm) around the reference field of view.
        min_overlap: smallest overlap share of the smaller field of view for ``"close"``, in ``(0, 1]``.

    Returns:
        ``(verdict, reason)`` with verdict ``"same"`` (nothing to do), ``"close"`` (resample) or ``"far"``
        (refuse); ``reason`` lists the differences and the overlap ("" when the same).

    Raises:
        ValueError: ``min_overlap`` outside ``(0, 1]`` or a negative ``tolerance_mm``.
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap!r}")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm!r}")
    same_shape = moving.shape == reference.shape
    same_affine = bool(np.allclose(moving.affine, reference.affine, rtol=0.0, atol=atol))
    if same_shape and same_affine:
        return "same", ""
    diffs = []
    if moving.axcodes != reference.axcodes:
        diffs.append(f"orientation {''.join(moving.axcodes)} vs {''.join(reference.axcodes)}")
    if not np.allclose(moving.spacing, reference.spacing, rtol=0.0, atol=atol):
        diffs.append(
            f"voxel size {np.round(moving.spacing, 3).tolist()} vs {np.round(reference.spacing, 3).tolist()} mm"
        )
    if not same_shape:
        diffs.append(f"shape {moving.shape} vs {reference.shape}")
    if not same_affine:
        delta = float(np.abs(moving.affine - reference.affine).max())
        diffs.append(f"affines differ by up to {delta:.4g} mm")
    share = overlap_fraction(moving, reference, tolerance_mm)
    diffs.append(f"fields of view overlap {share:.0%} in world space")
    if share < min_overlap:
        return "far", "; ".join(diffs) + f" (less than {min_overlap:.0%} with {tolerance_mm:g} mm slack)"
    return "close", "; ".join(diffs)


def image_like(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """float32 ``data`` as an image on the reference grid, with its qform/sform, their codes and units."""
    out = nib.Nifti1Image(data.astype(np.float32, copy=False), reference.affine)
    q, q_code = reference.header.get_qform(coded=True)
    s, s_code = reference.header.get_sform(coded=True)
    out.header.set_qform(q, int(q_code) if q is not None else None)
    out.header.set_sform(s, int(s_code) if s is not None else None)
    out.header.set_xyzt_units(*reference.header.get_xyzt_units())
    return out


def voxel_volume(image: nib.spatialimages.SpatialImage) -> float:
    """Volume of one voxel in mm^3 (the absolute determinant of the affine's 3x3 part)."""
    return float(abs(np.linalg.det(np.asarray(image.affine, dtype=float)[:3, :3])))


def choose_reference(images: Mapping[str, nib.spatialimages.SpatialImage], grid: str | None = None) -> str:
    """The sequence whose grid the case is segmented on (and the output written on).

    Args:
        images: modality key -> image (header) of the present sequences.
        grid: ``None`` for the default rule (the first present of :data:`REFERENCE_PRIORITY`), a modality key, or one
            of :data:`GRID_RULES`: ``"coarsest"`` (largest voxels: fewest voxels to segment, fastest) or
            ``"finest"`` (smallest voxels); ties go by :data:`REFERENCE_PRIORITY`.

    Raises:
        GeometryError: no known modality, an unknown ``grid``, or a ``grid`` naming a sequence that is not present.
    """
    present = [m for m in REFERENCE_PRIORITY if m in images]
    if grid is None:
        return reference_modality(list(images))
    if not present:
        raise GeometryError(f"no sequences: expected at least one of {MODALITIES}")
    if grid in MODALITIES:
        if grid not in images:
            raise GeometryError(
                f"grid {grid}: no {grid} sequence was given (present: {', '.join(present)}); name one of them, "
                f"or {' / '.join(GRID_RULES)}"
            )
        return grid
    if grid not in GRID_RULES:
        raise GeometryError(f"grid must be a sequence ({', '.join(MODALITIES)}) or one of {GRID_RULES}, got {grid!r}")
    sizes = {m: voxel_volume(images[m]) for m in present}
    pick = max if grid == "coarsest" else min
    best = pick(sizes.values())
    return next(m for m in present if np.isclose(sizes[m], best, rtol=1e-3))


@dataclass(frozen=True)
class Alignment:
    """A case's sequences on one grid (see :func:`align_volumes`).

    Attributes:
        reference: modality key whose grid the others were put on.
        images: modality key -> image on that grid (in memory; the reference's own image unchanged), present only.
        data: modality key -> float32 voxels ``(H, W, D)`` of those images.
        notes: what was resampled or re-oriented, and why (units named).
    """

    reference: str
    images: dict[str, nib.Nifti1Image]
    data: dict[str, np.ndarray]
    notes: tuple[str, ...]


def align_volumes(
    volumes: Mapping[str, tuple[nib.Nifti1Image, np.ndarray]],
    sources: Mapping[str, str] | None = None,
    grid: str | None = None,
    tolerance_mm: float = CENTRE_TOLERANCE_MM,
    min_overlap: float = MIN_OVERLAP_FRACTION,
    atol: float = AFFINE_ATOL,
) -> Alignment:
    """Put the read and checked sequences of one case on one grid, in memory.

    Sequences on the reference grid are kept as they are; sequences whose field of view overlaps the reference's in
    world space (see the module docstring), whatever their orientation, voxel size or shape, are re-oriented exactly
    or resampled with MONAI ``ResampleToMatch`` (trilinear, zero outside the source field of view).

    Args:
        volumes: modality key -> ``(image, float32 voxels (H, W, D))`` of each present sequence.
        sources: modality key -> how messages name it (a file path); default ``"<key> image"``.
        grid: which grid to use, see :func:`choose_reference`.
        tolerance_mm, min_overlap, atol: see :func:`compare_geometry`.

    Raises:
        GeometryError: unknown modality key, no sequence, a bad ``grid``, or grids too far apart (the message names
            the files, both grids and the difference).
    """
    unknown = [k for k in volumes if k not in MODALITIES]
    if unknown:
        raise GeometryError(f"unknown modality keys {unknown}; expected keys from {MODALITIES}")
    names = {m: (sources or {}).get(m) or f"{m} image" for m in volumes}
    ref_mod = choose_reference({m: img for m, (img, _) in volumes.items()}, grid)

    def geometry(m: str) -> VolumeGeometry:
        img, data = volumes[m]
        return VolumeGeometry(Path(names[m]), tuple(data.shape), np.asarray(img.affine, dtype=float))

    ref_geom = geometry(ref_mod)
    verdicts = {m: compare_geometry(geometry(m), ref_geom, atol, tolerance_mm, min_overlap) for m in volumes}
    far = {m: reason for m, (verdict, reason) in verdicts.items() if verdict == "far"}
    if far:
        lines = [
            f"{m} file {names[m]} ({geometry(m).describe()}) vs reference {ref_mod} file {names[ref_mod]} "
            f"({ref_geom.describe()}): {reason}"
            for m, reason in far.items()
        ]
        raise GeometryError(
            "sequences do not overlap in world space, too far apart to resample (not one co-registered case?): "
            + " | ".join(lines)
        )
    ref_img, ref_data = volumes[ref_mod]
    images = {m: img for m, (img, _) in volumes.items()}
    data = {m: np.asarray(d, dtype=np.float32) for m, (_, d) in volumes.items()}
    notes: list[str] = []
    close = [m for m in MODALITIES if m in volumes and verdicts[m][0] == "close"]
    if not close:
        return Alignment(ref_mod, images, data, ())
    dst = MetaTensor(torch.zeros((1, *ref_data.shape)), affine=torch.as_tensor(ref_geom.affine))
    resampler = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=np.float32)
    # flips and axis permutations first: exact voxel reordering, so a re-oriented copy of the reference (RAS vs
    # LPS, same world grid) comes back bit-identical instead of through float32 interpolation
    reorient = Orientation(axcodes="".join(ref_geom.axcodes), labels=_NIBABEL_AXIS_LABELS)
    for m in close:
        src_data = data[m]
        src = reorient(MetaTensor(torch.from_numpy(src_data[None]), affine=torch.as_tensor(geometry(m).affine)))
        src_affine = np.asarray(src.affine, dtype=float)
        if tuple(src.shape[1:]) == tuple(ref_data.shape) and np.allclose(src_affine, ref_geom.affine, 0.0, atol):
            out = np.asarray(src.as_tensor().numpy()[0], dtype=np.float32)
            how = "re-oriented (exact voxel reordering)"
        else:
            out = np.asarray(resampler(src, dst).detach().cpu().numpy()[0], dtype=np.float32)
            # grid_sample's float32 coordinates leave ~1e-7-weighted bleed into background voxels, which would
            # widen the brain box (voxels > 0) that the pipeline crops to: zero what is rounding noise
            out[np.abs(out) < _NOISE_FRACTION * float(np.abs(src_data).max())] = 0.0
            how = "resampled (trilinear)"
        images[m] = image_like(out, ref_img)
        data[m] = out
        notes.append(f"resampled {m} onto {ref_mod} grid: {how}, {verdicts[m][1]}")
    return Alignment(ref_mod, images, data, tuple(notes))


def check_and_align(
    paths: Mapping[str, str | os.PathLike | None],
    work_dir: str | os.PathLike | None = None,
    tolerance_mm: float = CENTRE_TOLERANCE_MM,
    min_overlap: float = MIN_OVERLAP_FRACTION,
    atol: float = AFFINE_ATOL,
    grid: str | None = None,
) -> tuple[dict[str, Path | None], list[str]]:
    """Validate the sequence files of one case and put them on one grid, as files.

    Every present file is read (see :func:`read_volume`) and aligned by :func:`align_volumes`. Sequences on the
    reference grid are returned unchanged; the others are written as float32 NIfTI files in ``work_dir``
    (``<key>_on_<reference>_grid.nii.gz``). Prediction aligns in memory (:class:`lckd_med.inference.Segmenter`);
    this is for callers that need the files.

    Args:
        paths: modality key (from ``MODALITIES``) -> file, or None when the sequence is missing.
        work_dir: folder for resampled files; the caller deletes it. None creates one with
            :func:`tempfile.mkdtemp` only when something is resampled (the parent of the returned files).
        tolerance_mm, min_overlap, atol: see :func:`compare_geometry`.
        grid: see :func:`choose_reference`.

    Returns:
        ``(aligned, notes)``: the same keys mapped to files on one grid (None kept for missing sequences), and
        human-readable notes such as ``"resampled t2 onto t1ce grid: resampled (trilinear), orientation RAS vs LPS;
        ...; fields of view overlap 100% in world space"``.

    Raises:
        GeometryError: unknown modality key, no sequence, a bad file, or grids too far apart (the message names
            the files, both grids and the difference).
    """
    unknown = [k for k in paths if k not in MODALITIES]
    if unknown:
        raise GeometryError(f"unknown modality keys {unknown}; expected keys from {MODALITIES}")
    present = {m: Path(p) for m, p in paths.items() if p is not None and str(p) != ""}
    reference_modality(list(present))
    volumes = {m: read_volume(present[m], m) for m in MODALITIES if m in present}
    alignment = align_volumes(volumes, {m: str(p) for m, p in present.items()}, grid, tolerance_mm, min_overlap, atol)
    aligned: dict[str, Path | None] = {m: present.get(m) for m in paths}
    moved = [m for m in MODALITIES if m in present and alignment.images[m] is not volumes[m][0]]
    if moved:
        out_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="lckd_align_"))
        out_dir.mkdir(parents=True, exist_ok=True)
        for m in moved:
            target = out_dir / f"{m}_on_{alignment.reference}_grid.nii.gz"
            nib.save(alignment.images[m], target)
            aligned[m] = target
    return aligned, list(alignment.notes)
