"""Procedural BraTS-like cases for demos and tests (no real data can be downloaded here).

Each case is a skull-stripped brain on the BraTS grid (``constants.brats_affine``: 240x240x155 at 1 mm,
120x120x78 at 2 mm) with four co-registered sequences in ``constants.MODALITIES`` order
(``flair, t1, t1ce, t2``) and a segmentation in the release's label convention.

Anatomy: a randomly deformed ellipsoid brain; a folded grey-matter cortex with thin sulcal CSF and an
interhemispheric fissure; white-matter interior; deep grey nuclei; lateral and third ventricles with choroid
plexus. Tumour: a necrotic core (NCR, label 1) inside an enhancing rim (ET, label 4, or 3 from 2023), wrapped
in oedema (ED, label 2) that grows along white matter. Low-grade cases may have no enhancing tumour at all.

The contrasts follow real MRI so that the missing-modality problem is real: ET is bright only in T1ce, oedema
is bright in FLAIR (CSF dark) and in T2 (CSF brighter still), necrosis is dark in T1/T1ce and bright-ish in
T2, and T1 carries little tumour contrast. A smooth multiplicative bias field, Rician noise, per-case
contrast and scale changes and a slight partial-volume blur complete each image.

Layouts written by :func:`write_dataset`:

* 2018, 2019: ``<out>/{HGG,LGG}/Brats18_SYN_001_1/Brats18_SYN_001_1_{flair,t1,t1ce,t2,seg}.nii.gz``
* 2020: flat ``<out>/BraTS20_Training_001/BraTS20_Training_001_<suffix>.nii.gz``
* 2021, 2022: flat ``<out>/BraTS2021_00001/BraTS2021_00001_<suffix>.nii.gz``
* 2023+: flat ``<out>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from lckd_med.constants import (
    BRATS_SHAPE_1MM,
    MODALITIES,
    SEGMENTATION_SUFFIX,
    brats_affine,
    file_suffixes,
    label_convention,
)
from lckd_med.data.layouts import parse_release
from lckd_med.utils.io import save_nifti_atomic

__all__ = [
    "GRADES",
    "TISSUES",
    "MIN_RELEASE",
    "MAX_RELEASE",
    "RELEASES_ACCEPTED",
    "MIN_SPACING",
    "MAX_SPACING",
    "validate_release",
    "release_layout",
    "case_id_for",
    "synthetic_shape",
    "generate_case",
    "write_case",
    "write_dataset",
]

GRADES: tuple[str, ...] = ("HGG", "LGG")
#: Releases whose naming this generator reproduces (2018-2022 legacy naming, 2023+ BraTS-GLI naming).
MIN_RELEASE: int = 2018
MAX_RELEASE: int = 2100
#: Isotropic voxel sizes (mm) the generator accepts; coarser grids lose the cortex and the ET rim.
MIN_SPACING: float = 1.0
MAX_SPACING: float = 4.0

# Tissue codes of the anatomy map returned as ``case["tissue"]``.
_BG, _CSF, _GM, _WM, _DGM, _ED, _NCR, _ET, _CP, _VES = range(10)
_N_TISSUES = 10
#: Tissue name -> code in ``generate_case(...)["tissue"]`` (ground truth for tests of the contrasts).
TISSUES: dict[str, int] = {
    "background": _BG,
    "csf": _CSF,
    "grey_matter": _GM,
    "white_matter": _WM,
    "deep_grey": _DGM,
    "oedema": _ED,
    "necrosis": _NCR,
    "enhancing": _ET,
    "choroid_plexus": _CP,
    "vessel": _VES,
}

# Relative intensities (white matter = 1) per modality, indexed by tissue code:
# (choroid plexus and cortical vessels enhance in T1ce too, so a bright T1ce voxel is not always tumour)
#        bg   CSF   GM    WM   DGM   ED    NCR   ET    plexus vessel
_CONTRAST: dict[str, tuple[float, ...]] = {
    "flair": (0.0, 0.22, 1.25, 1.00, 1.12, 2.00, 1.55, 1.70, 0.60, 0.50),
    "t1": (0.0, 0.30, 0.72, 1.00, 0.84, 0.80, 0.58, 0.80, 0.70, 0.65),
    "t1ce": (0.0, 0.33, 0.78, 1.00, 0.86, 0.84, 0.42, 1.95, 1.70, 1.60),
    "t2": (0.0, 2.60, 1.35, 1.00, 1.12, 1.95, 2.15, 1.55, 1.30, 0.50),
}
# Typical scanner scale per modality (real BraTS int16 intensities are in the hundreds to thousands).
_SCALE: dict[str, float] = {"flair": 450.0, "t1": 650.0, "t1ce": 800.0, "t2": 900.0}


#: What :func:`validate_release` accepts, as its messages (and ``python -m data_prep.synthetic``'s) say it.
RELEASES_ACCEPTED = f"a BraTS year {MIN_RELEASE}-{MAX_RELEASE} (2018-2022: legacy naming, 2023+: BraTS-GLI naming)"


def validate_release(release: int | str) -> int:
    """The release year as an int (parsed by :func:`lckd_med.data.layouts.parse_release`), or ValueError for years
    this generator does not reproduce."""
    try:
        year = parse_release(release)
    except ValueError:
        year = None
    if year is None or not MIN_RELEASE <= year <= MAX_RELEASE:
        raise ValueError(f"release must be {RELEASES_ACCEPTED}, got {release!r}")
    return year


def release_layout(release: int | str) -> str:
    """Directory layout of a release: ``"brats2018"`` (2018-2019), ``"flat"`` (2020-2022), ``"brats2023"``."""
    year = validate_release(release)
    if year <= 2019:
        return "brats2018"
    return "flat" if year <= 2022 else "brats2023"


def case_id_for(release: int | str, index: int) -> str:
    """Case identifier in the release's naming scheme (``index`` counts from 0)."""
    year = validate_release(release)
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    if year <= 2019:
        return f"Brats{year % 100:02d}_SYN_{index + 1:03d}_1"
    if year == 2020:
        return f"BraTS20_Training_{index + 1:03d}"
    if year <= 2022:
        return f"BraTS2021_{index + 1:05d}"
    return f"BraTS-GLI-{index:05d}-000"


def _validate_spacing(spacing: float) -> float:
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        raise TypeError(f"spacing must be a number of mm, got {spacing!r}") from None
    if not MIN_SPACING <= value <= MAX_SPACING:
        raise ValueError(f"spacing must be between {MIN_SPACING} and {MAX_SPACING} mm, got {spacing!r}")
    return value


def synthetic_shape(spacing: float = 2.0) -> tuple[int, int, int]:
    """Array shape covering the 240x240x155 mm BraTS field at ``spacing`` mm (1 mm: 240x240x155)."""
    sp = _validate_spacing(spacing)
    return tuple(int(np.ceil(n / sp - 1e-6)) for n in BRATS_SHAPE_1MM)  # type: ignore[return-value]


def _as_rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return np.random.default_rng(rng_or_seed)
    if isinstance(rng_or_seed, (bool, np.bool_)) or not isinstance(rng_or_seed, (int, np.integer)):
        raise TypeError(f"rng_or_seed must be a numpy Generator, SeedSequence or int, got {type(rng_or_seed)}")
    if rng_or_seed < 0:
        raise ValueError(f"seed must be >= 0, got {rng_or_seed}")
    return np.random.default_rng(int(rng_or_seed))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: float, scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``scale_mm``, float32 of ``shape``."""
    # White noise on a coarse grid, blurred and linearly upsampled: far cheaper than blurring at full resolution.
    step = max(scale_mm / 2.0, spacing)
    coarse = tuple(max(int(np.ceil(n * spacing / step)) + 2, 3) for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=scale_mm / step, mode="reflect")
    field = ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)
    return _upsample_linear(field, shape)


def _upsample_linear(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear interpolation of ``field`` onto ``shape`` with corners aligned."""
    # ~10x faster than scipy.ndimage.zoom(order=1) here; the last pass runs along the contiguous first axis
    for ax in reversed(range(field.ndim)):
        n, c = shape[ax], field.shape[ax]
        pos = np.linspace(0.0, c - 1.0, n)
        i0 = np.minimum(np.floor(pos).astype(np.intp), c - 2)
        w = (pos - i0).astype(np.float32).reshape([n if a == ax else 1 for a in range(field.ndim)])
        lo = np.take(field, i0, axis=ax)
        field = lo + (np.take(field, i0 + 1, axis=ax) - lo) * w
    return field


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int], sp: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue map (uint8 codes) of a healthy brain and the geometry the tumour placement needs."""
    # float32 throughout: numpy scalars of float64 would silently promote every full-volume array
    centre = (np.array([120.0, 120.0, 76.0]) + rng.uniform(-4, 4, size=3)).astype(np.float32)
    semi = (np.array([67.0, 84.0, 58.0]) * rng.uniform(0.92, 1.06, size=3)).astype(np.float32)
    rot = _rotation(rng, 6.0)
    idx = [np.arange(n, dtype=np.float32) * sp for n in shape]
    gx, gy, gz = (idx[0] - centre[0])[:, None, None], (idx[1] - centre[1])[None, :, None], idx[2] - centre[2]
    # brain-frame coordinates (mm): u left-right, v posterior-anterior, w inferior-superior
    u = rot[0, 0] * gx + rot[0, 1] * gy + rot[0, 2] * gz
    v = rot[1, 0] * gx + rot[1, 1] * gy + rot[1, 2] * gz
    w = rot[2, 0] * gx + rot[2, 1] * gy + rot[2, 2] * gz
    rho = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2)
    radial = np.sqrt(u**2 + v**2 + w**2) / np.maximum(rho, 1e-3)  # mm from centre to the ellipsoid surface
    # flatter base (temporal lobes / cerebellum) and a lumpy outline that stays inside the 240x240x155 mm field
    lumps = np.clip(_smooth_field(rng, shape, sp, 35.0), -2.5, 2.5)
    outline = 1.0 + 0.06 * lumps - 0.08 * np.clip(-w / semi[2] - 0.55, 0, None)
    brain = rho < outline
    depth = radial * (outline - rho)  # approximate depth below the brain surface (mm)

    gyri = _smooth_field(rng, shape, sp, 7.0)
    sulci = _smooth_field(rng, shape, sp, 7.0)
    tissue = np.full(shape, _WM, dtype=np.uint8)
    wm_depth = 5.0 + 13.0 * np.clip(0.6 - gyri, 0.0, 1.8)  # white matter reaches up into the gyral crowns
    tissue[depth < wm_depth] = _GM
    sulcal_csf = (np.abs(sulci) < 0.16) & (gyri < 0.3) & (depth < wm_depth - 3.0)
    sulcal_csf |= (depth < 1.8) & (gyri < 0.0)
    tissue[sulcal_csf] = _CSF
    tissue[(np.abs(sulci) < 0.035) & (gyri < 0.3) & (depth < 4.0)] = _VES  # cortical vessels run in the sulci
    fissure = (np.abs(u) < max(1.2, 0.6 * sp)) & ((w > -5.0) | (v < -25.0)) & (rho > 0.3)
    tissue[fissure & brain] = _CSF

    # deep grey nuclei (thalamus / basal ganglia) on both sides of the midline
    dgm_size = rng.uniform(0.85, 1.15)
    for side in (-1.0, 1.0):
        d = ((u - side * 17.0) / (10.0 * dgm_size)) ** 2 + ((v + 2.0) / (17.0 * dgm_size)) ** 2
        d = d + ((w + 4.0) / (11.0 * dgm_size)) ** 2
        tissue[d < 1.0] = _DGM

    # lateral ventricles: curved bananas whose size varies between subjects; thin third ventricle on the midline
    vent_field = _smooth_field(rng, shape, sp, 10.0)
    vsize = rng.uniform(0.75, 1.45)
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        bend = 8.0 - 0.011 * (v - 2.0) ** 2
        d = ((u - side * 8.5) / (5.0 * vsize)) ** 2 + ((v - 2.0) / 26.0) ** 2 + ((w - bend) / (6.5 * vsize)) ** 2
        ventricles |= d < 1.0 + 0.25 * vent_field
    third = (np.abs(u) < 1.6) & (np.abs(v + 3.0) < 11.0) & (np.abs(w + 4.0) < 7.0)
    ventricles |= third
    tissue[ventricles] = _CSF
    plexus = ventricles & ndimage.binary_erosion(ventricles) & (vent_field > 1.1) & (np.abs(u) > 4.0)
    tissue[plexus] = _CP
    tissue[~brain] = _BG
    geometry = {"centre": centre, "semi": semi, "rot": rot, "rho": rho, "depth": depth}
    return tissue, geometry


def _tumour(
    rng: np.random.Generator,
    tissue: np.ndarray,
    geom: dict[str, Any],
    sp: float,
    grade: str,
    enhancing: bool,
) -> np.ndarray:
    """Write the tumour into ``tissue`` (in place); return the oedema proximity map (1 at the core, 0 outside)."""
    shape = tissue.shape
    brain = tissue != _BG
    if grade == "HGG":
        r_core = rng.uniform(10.0, 22.0)
        ed_mm = rng.uniform(4.0, 13.0)
    else:
        r_core = rng.uniform(8.0, 20.0)
        ed_mm = rng.uniform(4.0, 16.0)
    # centre: a random brain voxel deep enough for the core, away from the ventricles
    candidates = np.flatnonzero(
        (geom["depth"] > 0.6 * r_core + 4.0) & (geom["rho"] < 0.8) & np.isin(tissue, (_WM, _GM, _DGM))
    )
    if candidates.size == 0:  # pragma: no cover - only for extreme spacing/size draws
        candidates = np.flatnonzero(brain)
    c_vox = np.array(np.unravel_index(rng.choice(candidates), shape))
    stretch = rng.uniform(0.75, 1.3, size=3)
    # the crop must hold the largest core/oedema the shape multipliers below allow
    reach = (r_core * 1.4 + ed_mm) * 1.3 * stretch.max() + 2.0 * sp
    lo = np.maximum(c_vox - int(np.ceil(reach / sp)), 0)
    hi = np.minimum(c_vox + int(np.ceil(reach / sp)) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = tissue[box]
    bshape = sub.shape
    ax = [(np.arange(a, b, dtype=np.float32) - c) * sp for a, b, c in zip(lo, hi, c_vox, strict=True)]
    dist = np.sqrt(
        (ax[0][:, None, None] / stretch[0]) ** 2 + (ax[1][None, :, None] / stretch[1]) ** 2 + (ax[2] / stretch[2]) ** 2
    )
    q = dist / (r_core * np.clip(1.0 + 0.22 * _smooth_field(rng, bshape, sp, 9.0), 0.6, 1.4))  # < 1 inside the core
    sub_brain = sub != _BG
    core = (q < 1.0) & sub_brain
    if not core.any():  # pragma: no cover - a core always contains its centre voxel
        core[tuple(c_vox - lo)] = True

    # oedema: geodesic growth through white matter (and a little grey), bounded by an irregular ball
    allowed = np.isin(sub, (_WM, _DGM)) | ((sub == _GM) & (_smooth_field(rng, bshape, sp, 6.0) > 0.6))
    limit = dist < (r_core + ed_mm) * np.clip(1.0 + 0.2 * _smooth_field(rng, bshape, sp, 12.0), 0.7, 1.3)
    steps = max(int(round(1.6 * ed_mm / sp)), 1)  # the irregular ball, not the step count, sets the extent
    grown = ndimage.binary_dilation(
        core, structure=ndimage.generate_binary_structure(3, 2), iterations=steps, mask=(allowed & limit) | core
    )
    oedema = grown & ~core & sub_brain

    sub[oedema] = _ED
    if enhancing:
        if grade == "HGG":
            # necrotic centre, enhancing rim 2-10 mm thick and never more than 60 % of the core radius
            rim_mm = rng.uniform(2.5, 7.5) * np.clip(1.0 + 0.25 * _smooth_field(rng, bshape, sp, 8.0), 0.5, 1.5)
            rim_mm = np.minimum(rim_mm, 0.6 * r_core)
            necrotic = core & (q < 1.0 - rim_mm / r_core)
            sub[core] = _ET
            sub[necrotic] = _NCR
        else:
            # low grade with patchy enhancement
            sub[core] = _NCR
            patches = core & (_smooth_field(rng, bshape, sp, 5.0) > 0.9)
            if not patches.any():
                patches = core & (q < 0.35)
            sub[patches] = _ET
    else:
        sub[core] = _NCR
    proximity = np.zeros(shape, dtype=np.float32)
    proximity[box] = np.clip(1.0 - (dist - r_core) / ed_mm, 0.0, 1.0)
    return proximity


def generate_case(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence,
    spacing: float = 2.0,
    grade: str = "HGG",
    release: int | str = 2018,
    enhancing: bool | None = None,
) -> dict[str, Any]:
    """One procedural BraTS-like case.

    Args:
        rng_or_seed: a numpy Generator (consumed), a SeedSequence or a non-negative int seed.
        spacing: isotropic voxel size in mm, 1.0-4.0 (1 mm: 240x240x155; 2 mm: 120x120x78).
        grade: ``"HGG"`` or ``"LGG"``.
        release: BraTS year (2018-2022 legacy labels with ET=4; 2023+ ET=3).
        enhancing: whether the tumour has an enhancing part. ``None``: always for HGG, 75 % of LGG (about a
            quarter of LGG have no ET, ``docs/data.md``).

    Returns:
        dict with ``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``: int16 arrays (H, W, D), 0 outside the brain and
        >= 1 inside; ``"seg"``: uint8 (H, W, D) in the release's label convention; ``"brain"``: bool (H, W, D);
        ``"tissue"``: uint8 (H, W, D) codes of :data:`TISSUES`;
        ``"affine"``: 4x4 float64 (``constants.brats_affine(spacing)``); ``"grade"``, ``"enhancing"``,
        ``"release"`` (int), ``"spacing"`` (float).
    """
    sp = _validate_spacing(spacing)
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
    year = validate_release(release)
    if enhancing is not None and not isinstance(enhancing, (bool, np.bool_)):
        raise TypeError(f"enhancing must be a bool or None, got {enhancing!r}")
    rng = _as_rng(rng_or_seed)
    if enhancing is None:
        enhancing = grade == "HGG" or bool(rng.random() < 0.75)
    conv = label_convention(year)
    shape = synthetic_shape(sp)

    tissue, geom = _anatomy(rng, shape, sp)
    proximity = _tumour(rng, tissue, geom, sp, grade, bool(enhancing))
    brain = tissue != _BG

    seg = np.zeros(shape, dtype=np.uint8)
    seg[tissue == _NCR] = conv.ncr
    seg[tissue == _ED] = conv.ed
    seg[tissue == _ET] = conv.et

    # shared tissue texture plus stronger tumour heterogeneity
    texture = 0.03 * _smooth_field(rng, shape, sp, 4.0)
    tumour = (tissue == _ED) | (tissue == _NCR) | (tissue == _ET)
    texture[tumour] *= 2.5
    # oedema is brighter near the core on the fluid-sensitive sequences
    ed_grade = np.where(tissue == _ED, 0.82 + 0.18 * proximity, 1.0).astype(np.float32)
    pv_sigma = 0.45 + 0.3 / sp  # partial-volume blur in voxels

    out: dict[str, Any] = {}
    for mod in MODALITIES:
        lut = np.asarray(_CONTRAST[mod], dtype=np.float32) * rng.normal(1.0, 0.04, size=_N_TISSUES).astype(np.float32)
        lut[_BG] = 0.0
        img = lut[tissue] * (1.0 + texture)
        if mod in ("flair", "t2"):
            img *= ed_grade
        img = ndimage.gaussian_filter(img, sigma=pv_sigma)
        img *= np.exp(0.15 * _smooth_field(rng, shape, sp, 90.0))  # smooth receive-coil bias
        sigma = rng.uniform(0.02, 0.05)
        noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
        img *= _SCALE[mod] * rng.uniform(0.6, 1.6)
        img = np.clip(np.rint(img), 1, np.iinfo(np.int16).max)
        img[~brain] = 0
        out[mod] = img.astype(np.int16)
    out.update(
        seg=seg,
        brain=brain,
        tissue=tissue,
        affine=brats_affine(sp),
        grade=grade,
        enhancing=bool((seg == conv.et).any()),
        release=year,
        spacing=sp,
    )
    return out


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save with qform = sform (codes 1), atomically."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    save_nifti_atomic(img, path)


def _case_dir(out_dir: Path, release: int, case_id: str, grade: str) -> Path:
    return out_dir / grade / case_id if release_layout(release) == "brats2018" else out_dir / case_id


def _file_name(release: int, case_id: str, suffix: str) -> str:
    sep = "-" if release_layout(release) == "brats2023" else "_"
    return f"{case_id}{sep}{suffix}.nii.gz"


def write_case(
    case: dict[str, Any], out_dir: str | os.PathLike, case_id: str, missing: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Write one case from :func:`generate_case` in its release's layout.

    Args:
        case: output of :func:`generate_case`.
        out_dir: dataset root.
        case_id: identifier (see :func:`case_id_for`).
        missing: modality keys not to write; a stale file of that name is removed.

    Returns:
        ``{"case_id", "grade", "case_dir", "paths", "missing", "enhancing"}`` where ``paths`` maps each modality
        key and ``"seg"`` to a Path (None for a missing sequence).
    """
    unknown = [m for m in missing if m not in MODALITIES]
    if unknown:
        raise ValueError(f"case {case_id}: unknown missing modality {unknown}; expected keys from {MODALITIES}")
    if len(set(missing)) >= len(MODALITIES):
        raise ValueError(f"case {case_id}: at least one sequence must be written, got missing={missing}")
    year = int(case["release"])
    suffixes = file_suffixes(year)
    case_dir = _case_dir(Path(out_dir), year, case_id, case["grade"])
    case_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {}
    for mod in MODALITIES:
        path = case_dir / _file_name(year, case_id, suffixes[mod])
        if mod in missing:
            path.unlink(missing_ok=True)
            paths[mod] = None
        else:
            _save_nifti(case[mod], case["affine"], path)
            paths[mod] = path
    seg_path = case_dir / _file_name(year, case_id, SEGMENTATION_SUFFIX)
    _save_nifti(case["seg"], case["affine"], seg_path)
    paths["seg"] = seg_path
    return {
        "case_id": case_id,
        "grade": case["grade"],
        "case_dir": case_dir,
        "paths": paths,
        "missing": tuple(m for m in MODALITIES if m in missing),
        "enhancing": bool(case["enhancing"]),
    }


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def write_dataset(
    out_dir: str | os.PathLike,
    n_cases: int,
    seed: int = 0,
    spacing: float = 2.0,
    release: int | str = 2018,
    lgg_fraction: float = 0.3,
    missing_fraction: float = 0.0,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write ``n_cases`` procedural cases in the release's BraTS layout (deterministic for a seed).

    ``round(lgg_fraction * n_cases)`` cases are LGG; the first LGG case, and every fourth one after it, has no
    enhancing tumour (about a quarter of LGG, ``docs/data.md``). ``round(missing_fraction * n_cases)`` cases lack one or two sequence files on disk (the
    segmentation is always written).

    Args:
        overwrite: replace (or, for a missing sequence, remove) files already at the paths the cases take; without
            it, any such file stops the run before anything is written.

    Returns:
        One dict per case, in case order, as returned by :func:`write_case`.

    Raises:
        FileExistsError: a file the dataset would write already exists and ``overwrite`` is False.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)):
        raise TypeError(f"n_cases must be an int, got {n_cases!r}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    sp = _validate_spacing(spacing)
    year = validate_release(release)
    lgg_fraction = _check_fraction("lgg_fraction", lgg_fraction)
    missing_fraction = _check_fraction("missing_fraction", missing_fraction)

    plan = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    n_lgg = int(round(lgg_fraction * n_cases))
    lgg = set(plan.permutation(n_cases)[:n_lgg].tolist())
    n_missing = int(round(missing_fraction * n_cases))
    missing_cases = set(plan.permutation(n_cases)[:n_missing].tolist())
    case_seeds = np.random.SeedSequence(int(seed)).spawn(n_cases)
    if not overwrite:
        suffixes = [*file_suffixes(year).values(), SEGMENTATION_SUFFIX]
        taken = [
            path
            for i in range(n_cases)
            for grade in GRADES  # either grade's folder: checked before the grades are drawn
            for suffix in suffixes
            if (
                path := _case_dir(Path(out_dir), year, case_id_for(year, i), grade)
                / _file_name(year, case_id_for(year, i), suffix)
            ).exists()
        ]
        if taken:
            raise FileExistsError(
                f"{taken[0]} exists ({len(taken)} file(s) the synthetic dataset would write are there already); they "
                f"were left untouched: choose an empty --out folder or pass --overwrite to replace them"
            )

    records = []
    lgg_seen = 0
    for i in range(n_cases):
        grade = "LGG" if i in lgg else "HGG"
        enhancing: bool | None = True
        if grade == "LGG":
            enhancing = lgg_seen % 4 != 0
            lgg_seen += 1
        missing: tuple[str, ...] = ()
        if i in missing_cases:
            k = int(plan.integers(1, 3))
            missing = tuple(sorted(plan.choice(len(MODALITIES), size=k, replace=False).tolist()))
            missing = tuple(MODALITIES[j] for j in missing)
        case = generate_case(case_seeds[i], spacing=sp, grade=grade, release=year, enhancing=enhancing)
        records.append(write_case(case, out_dir, case_id_for(year, i), missing))
    return records
