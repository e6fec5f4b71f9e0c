"""Checks that a discovered BraTS case can be trained or evaluated on, and that a volume can be an MRI of a head.

:func:`validate_case` reads every present file once and never raises for a bad case: it returns a
:class:`CaseCheck` listing every reason (each naming its file), so one corrupt case never stops a dataset
scan. A missing sequence is not an error (the case is usable with that channel null / all-zero); a
sequence file that is present but broken is.

Garbage in, garbage out is refused by one check used everywhere a sequence is read (data preparation, evaluation's
datalist, batch inference and ``lckd-med predict``, through :func:`lckd_med.data.volume.read_nifti`):
:func:`head_mri_problem` refuses a volume that cannot be an MRI of a head (a mask, a label map, a constant image,
pure noise, a handful of voxels), with the thresholds named below; :func:`case_file_problems` refuses a case whose
sequences are one file given twice (a copy or a link: same content) or files of different patients (file-name
prefixes that disagree). The thresholds leave every real BraTS-like volume well inside: the synthetic heads of
:mod:`lckd_med.data.synthetic` at 1, 2 and 4 mm have over 20,000 non-zero voxels, hundreds of distinct intensities and
a neighbour correlation above 0.9 (``tests/data/test_validation.py`` pins this).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from lckd_med.constants import AFFINE_ATOL_MM, MODALITIES, LabelConvention, label_convention
from lckd_med.data.layouts import BratsCase, Issue
from lckd_med.data.naming import case_prefix
from lckd_med.data.volume import describe_error, read_nifti
from lckd_med.utils.memory import check_fits
from lckd_med.utils.outputs import file_sha256, same_file

__all__ = [
    "AFFINE_ATOL_MM",
    "GZIP_MAX_RATIO",
    "MIN_AXIS_VOXELS",
    "MIN_NONZERO_VOXELS",
    "MIN_DISTINCT_INTENSITIES",
    "MIN_NEIGHBOUR_CORRELATION",
    "MAX_AFFINE_CONDITION",
    "READ_MEMORY_FACTOR",
    "head_mri_problem",
    "case_file_problems",
    "label_file_problems",
    "Issue",
    "CaseCheck",
    "check_volume_file",
    "check_volume_header",
    "image_header_problem",
    "check_normalisable",
    "normalisation_problem",
    "validate_case",
    "validate_cases",
]

#: Deflate cannot compress more than about 1032:1; a ``.nii.gz`` whose header claims more data than this times
#: its size is lying (a corrupt or hostile header), and reading it would first allocate the claimed size.
GZIP_MAX_RATIO: int = 1100
#: Above this claimed size (bytes) a ``.nii.gz`` is also checked against the uncompressed size in its gzip trailer.
_TRAILER_CHECK_BYTES: int = 1 << 30
#: Reading a volume and checking it holds a few float32/float64 copies of it at once: the claimed voxel count times
#: this many bytes must fit in the available memory, else the file is refused before reading (a gzip bomb that
#: stays within :data:`GZIP_MAX_RATIO` would otherwise end in a raw ``MemoryError`` or the kernel's OOM killer).
READ_MEMORY_FACTOR: int = 24
#: The affine's 3x3 part must be invertible: its condition number (largest / smallest singular value, i.e. the voxel
#: size ratio of the grid, about 1 to 10 for MRI) must stay below this. A zero voxel size or two axes mapped onto one
#: make it singular: no world position, no resampling, no grid check.
MAX_AFFINE_CONDITION: float = 1e6

#: An MRI of a head has at least this many voxels along every axis: a single slice or a 1 x 1 x 1 "volume" is none.
MIN_AXIS_VOXELS: int = 8
#: ... and at least this many non-zero voxels: a brain on a 4 mm grid (the coarsest lckd_med trains on) has about
#: 20,000; one stray voxel or a small blob is not a head.
MIN_NONZERO_VOXELS: int = 1000
#: ... and at least this many distinct non-zero intensities: a binary mask has 1, a label map 3 or 4, a constant image
#: 1; an MRI has hundreds (counted on up to 200,000 voxels).
MIN_DISTINCT_INTENSITIES: int = 16
#: ... and neighbouring voxels alike: the correlation of each voxel with its neighbour, averaged over the three axes,
#: is above 0.9 for heads (tissue spans many voxels, the head sits in empty background) and about 0 for pure noise.
MIN_NEIGHBOUR_CORRELATION: float = 0.3
_DISTINCT_SAMPLE = 200_000
_CORRELATION_VOXELS = 2_000_000


def _gzip_trailer_size(path: Path) -> int | None:
    """Uncompressed size modulo 2**32 stored in the last 4 bytes of a gzip file (its last member)."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def check_volume_header(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> None:
    """Refuse a NIfTI whose header cannot be true, before any voxel is read.

    Every read site calls this right after ``nib.load`` (which reads the header only): the voxel count and data
    type the header claims must fit the file's size (an uncompressed file must hold them; a gzip file cannot
    compress beyond ~1032:1 and, for claims over 1 GiB, its trailer must state the claimed size), so a corrupt or
    hostile header never makes us allocate gigabytes; and the affine must be finite.

    Raises:
        ValueError: naming the file, what the header claims and what to do.
    """
    path = Path(path)
    shape = tuple(int(s) for s in img.shape)
    try:
        itemsize = int(np.dtype(img.get_data_dtype()).itemsize)
    except TypeError:
        itemsize = 1
    claimed = int(np.prod(shape, dtype=np.float64)) * itemsize
    offset = int(getattr(img.header, "get_data_offset", lambda: 0)() or 0)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e.strerror})") from e
    fix = "the file is corrupt or not what it claims: re-export or re-download it"
    if path.name.lower().endswith(".gz"):
        if claimed > GZIP_MAX_RATIO * max(size, 1):
            raise ValueError(
                f"{path}: header claims {shape} voxels ({claimed / 2**20:.1f} MiB) but the compressed file has only "
                f"{size} bytes, more than gzip can compress; {fix}"
            )
        trailer = _gzip_trailer_size(path)
        if claimed > _TRAILER_CHECK_BYTES and trailer is not None and trailer < (offset + claimed) % 2**32:
            raise ValueError(
                f"{path}: header claims {claimed / 2**30:.2f} GiB of voxel data but the gzip stream holds "
                f"{trailer / 2**20:.1f} MiB; {fix}"
            )
    elif size < offset + claimed:
        raise ValueError(
            f"{path}: header claims {shape} voxels ({offset + claimed} bytes with the header) but the file has "
            f"{size} bytes (truncated); {fix}"
        )
    problem = image_header_problem(img)
    if problem:
        raise ValueError(f"{path}: {problem}")
    check_fits(
        float(np.prod(shape, dtype=np.float64)) * READ_MEMORY_FACTOR,
        f"{path}: reading its {shape} voxels",
        "the file is corrupt or far larger than a head MRI; check it, or free memory",
    )


def image_header_problem(img: nib.spatialimages.SpatialImage) -> str | None:
    """What makes an image's header unusable whatever holds it (a file or memory): an affine with NaN or infinite
    entries, a singular affine (a zero voxel size, two axes mapped onto one), complex-valued voxels. None when fine.
    """
    affine = np.asarray(img.affine, dtype=float) if img.affine is not None else None
    if affine is not None and not np.isfinite(affine).all():
        return (
            "the affine (voxel-to-world matrix in the header) holds NaN or infinite entries; "
            "fix the qform/sform of this file (e.g. re-save it with nibabel or fslorient)"
        )
    if affine is not None and affine.shape == (4, 4):
        try:
            singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
        except np.linalg.LinAlgError:
            singular = np.zeros(3)
        if singular.min() <= singular.max() / MAX_AFFINE_CONDITION:
            sizes = ", ".join(f"{v:.3g}" for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
            return (
                f"the affine (voxel-to-world matrix in the header) is singular (voxel sizes {sizes} mm): a "
                "zero voxel size or two axes mapped onto one; fix the qform/sform or pixdim of this file"
            )
    try:
        kind = np.dtype(img.get_data_dtype()).kind
    except TypeError:
        kind = ""
    if kind == "c":
        return (
            f"holds complex-valued voxels ({img.get_data_dtype()}); an MRI for segmentation is real-valued: "
            "save the magnitude image instead"
        )
    return None


def check_volume_file(path: str | os.PathLike) -> None:
    """:func:`check_volume_header` for a file path (header read only); files not named ``.nii``/``.nii.gz`` are
    left to their own reader.

    Raises:
        ValueError: see :func:`check_volume_header`; nibabel's own errors on an unreadable header propagate.
    """
    if str(path).lower().endswith((".nii", ".nii.gz")):
        check_volume_header(nib.load(str(path)), path)


def check_normalisable(data: np.ndarray, path: str | os.PathLike) -> None:
    """Raise when float32 z-score normalisation of ``data`` would not give finite, informative values.

    Raises:
        ValueError: naming ``path`` and the fix (see :func:`normalisation_problem`).
    """
    problem = normalisation_problem(data)
    if problem:
        raise ValueError(f"{path}: {problem}")


def normalisation_problem(data: np.ndarray) -> str | None:
    """Why float32 z-score normalisation of the non-zero voxels (what the pipelines do) gives non-finite values,
    or None when it is fine. Finite but huge intensities (beyond ~1e19) overflow the variance."""
    import torch  # the pipelines' arithmetic, checked with the same library; imported here to keep start-up light

    values = torch.as_tensor(np.asarray(data, dtype=np.float32)[np.asarray(data) != 0])
    if values.numel() == 0 or not torch.isfinite(values).all():
        return None  # empty and non-finite volumes are reported by their own checks
    mean, std = values.mean(), values.std(unbiased=False)
    if torch.isfinite(mean) and torch.isfinite(std) and (std == 0 or torch.isfinite((values - mean) / std).all()):
        return None
    peak = float(np.abs(np.asarray(data, dtype=np.float64)).max())
    return (
        f"intensities up to {peak:.3g} overflow the float32 z-score normalisation (non-finite result); "
        "rescale this image (e.g. to its original scanner range) and try again"
    )


def head_mri_problem(data: np.ndarray) -> str | None:
    """Why ``data`` (an image volume, finite and not all zero) cannot be an MRI of a head, or None when it can.

    Checks, in order, against the named thresholds: every axis has :data:`MIN_AXIS_VOXELS` voxels; at least
    :data:`MIN_NONZERO_VOXELS` are non-zero; the non-zero voxels take :data:`MIN_DISTINCT_INTENSITIES` distinct
    values; neighbouring voxels correlate at least :data:`MIN_NEIGHBOUR_CORRELATION` (pure noise does not).
    """
    shape = tuple(int(s) for s in data.shape)
    why = None
    if min(shape, default=0) < MIN_AXIS_VOXELS:
        why = f"its shape {shape} has fewer than {MIN_AXIS_VOXELS} voxels along an axis"
    else:
        nonzero = data[data != 0]
        if nonzero.size < MIN_NONZERO_VOXELS:
            why = f"only {nonzero.size} non-zero voxels (a head has at least {MIN_NONZERO_VOXELS})"
        else:
            sample = nonzero[:: max(1, nonzero.size // _DISTINCT_SAMPLE)]
            distinct = int(np.unique(sample).size)
            if distinct < MIN_DISTINCT_INTENSITIES:
                why = (
                    f"only {distinct} distinct non-zero intensit{'y' if distinct == 1 else 'ies'} (a mask, a label map "
                    f"or a constant image; an MRI has at least {MIN_DISTINCT_INTENSITIES})"
                )
            else:
                correlation = _neighbour_correlation(data)
                if correlation < MIN_NEIGHBOUR_CORRELATION:
                    why = (
                        f"neighbouring voxels are unrelated (correlation {correlation:.2f}, an MRI has at least "
                        f"{MIN_NEIGHBOUR_CORRELATION}): pure noise?"
                    )
    if why is None:
        return None
    return f"does not look like an MRI of a head: {why}; check that this is the right file"


def _neighbour_correlation(data: np.ndarray) -> float:
    """Mean over the three axes of the correlation between each voxel and its next neighbour (on a regular subsample
    of at most ``_CORRELATION_VOXELS`` voxels)."""
    step = max(1, int(np.ceil((data.size / _CORRELATION_VOXELS) ** (1 / 3))))
    x = np.asarray(data[::step, ::step, ::step], dtype=np.float64)
    values = []
    for axis in range(3):
        a = np.moveaxis(x, axis, 0)
        u, v = a[:-1].ravel(), a[1:].ravel()
        su, sv = u.std(), v.std()
        values.append(float(((u - u.mean()) * (v - v.mean())).mean() / (su * sv)) if su > 0 and sv > 0 else 0.0)
    return float(np.mean(values))


def case_file_problems(paths: Mapping[str, str | os.PathLike | None]) -> list[tuple[str, str]]:
    """What makes the sequence files of one case not one case: ``[(file, reason), ...]``, empty when fine.

    * one file given for two sequences: the same path, a link to it, or a copy (equal content, compared by SHA-256);
    * files of different patients: BraTS-named files (``<prefix>_flair.nii.gz``, ``<prefix>-t1c.nii.gz``) whose
      prefixes disagree. Files named otherwise are not compared by name.

    Args:
        paths: modality key -> file (None: missing).
    """
    present = [(m, Path(p)) for m, p in paths.items() if p is not None and str(p) != ""]
    problems: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    for i, (m, p) in enumerate(present):
        for m0, p0 in present[:i]:
            if same_file(p, p0):
                problems.append((str(p), f"the {m} file is the {m0} file ({p0}); give each sequence its own scan"))
                break
        else:
            try:
                digest = file_sha256(p)
            except OSError:
                continue  # unreadable: reported by the reader
            if digest in digests:
                problems.append(
                    (
                        str(p),
                        f"the {m} file has the same content as the {digests[digest]} file (a copy of one scan given as "
                        "two sequences); give each sequence its own scan",
                    )
                )
            else:
                digests[digest] = m
    prefixes = {m: case_prefix(p.name) for m, p in present}
    named = {m: v for m, v in prefixes.items() if v is not None}
    if len({v.lower() for v in named.values()}) > 1:
        listing = ", ".join(f"{m} {paths[m]}" for m in named)
        problems.append(
            (
                str(present[0][1].parent),
                f"the sequence files name different cases ({listing}): files of two patients in one case? Put each "
                "patient's files in their own case folder (or rename them if they are one patient)",
            )
        )
    return problems


@dataclass(frozen=True)
class CaseCheck:
    """Outcome of :func:`validate_case`.

    Attributes:
        case: the case checked.
        ok: ``True`` when the case is usable (``reasons`` is empty).
        reasons: why the case is rejected, one :class:`Issue` per problem, each naming its file.
        missing_modalities: modality keys with no file, in modality order (not a rejection reason).
        warnings: notes that do not reject the case (squeezed 4-D file, empty segmentation).
        shape: common ``(H, W, D)`` of the volumes, or ``None`` when no file could be read.
    """

    case: BratsCase
    ok: bool
    reasons: tuple[Issue, ...]
    missing_modalities: tuple[str, ...]
    warnings: tuple[Issue, ...] = field(default=())
    shape: tuple[int, int, int] | None = None


def _check_label(
    path: Path, data: np.ndarray, convention: LabelConvention, reasons: list[Issue], warnings: list[Issue]
) -> None:
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.all():
            reasons.append(
                Issue(str(path), f"segmentation has {int(data.size - np.count_nonzero(finite))} non-finite voxels")
            )
            return
        if not np.array_equal(data, np.round(data)):
            reasons.append(Issue(str(path), "segmentation has non-integer values"))
            return
    elif not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        reasons.append(Issue(str(path), f"segmentation has unsupported data type {data.dtype}"))
        return
    values = np.unique(data.astype(np.int64, copy=False))
    bad = sorted(int(v) for v in values if int(v) not in convention.labels)
    if bad:
        hint = ""
        if convention.et == 4 and bad == [3]:
            hint = " (label 3 is ET from BraTS 2023 on: pass release 2023)"
        elif convention.et == 3 and bad == [4]:
            hint = " (label 4 is ET up to BraTS 2022: pass the case's release year)"
        reasons.append(
            Issue(
                str(path),
                f"segmentation values {bad} not allowed by convention {convention.name} "
                f"(allowed {list(convention.labels)}){hint}",
            )
        )
    elif values.size == 1 and int(values[0]) == 0:
        warnings.append(Issue(str(path), "segmentation is empty (no tumour voxel)"))


def label_file_problems(path: str | os.PathLike, convention: int | str | LabelConvention) -> list[str]:
    """Why a segmentation file cannot be scored in ``convention`` (unreadable, not 3-D, values outside the
    convention's labels, non-finite or non-integer values), each without the path; empty when fine."""
    convention = label_convention(convention)
    read = read_nifti(path, label=True)
    if read.problems or read.data is None:
        return list(read.problems)
    reasons: list[Issue] = []
    _check_label(Path(path), read.data, convention, reasons, [])
    return [r.reason for r in reasons]


def validate_case(
    case: BratsCase,
    convention: int | str | LabelConvention = "brats2018",
    require_label: bool = True,
    *,
    affine_atol: float = AFFINE_ATOL_MM,
) -> CaseCheck:
    """Check that every file of a case is a readable, consistent 3-D NIfTI volume.

    Checks, each failure becoming one reason naming its file: the file loads with nibabel (corrupt gzip,
    truncated data, not a NIfTI); it is 3-D (a 4-D file with a trailing singleton is accepted and
    squeezed, with a warning); all sequences and the segmentation share one shape and one affine (within
    ``affine_atol`` mm); intensities are finite and not all zero; segmentation values belong to
    ``convention.labels``; at least one sequence is present; the segmentation is present when
    ``require_label``. Each file's data is read once.

    Args:
        case: a discovered case.
        convention: label convention (or release year) the segmentation must follow.
        require_label: reject the case when it has no segmentation file.
        affine_atol: tolerance on affine entries, in mm.

    Returns:
        The :class:`CaseCheck`; never raises for a bad case.

    Raises:
        TypeError: ``case`` is not a :class:`BratsCase`.
        ValueError: unknown ``convention`` or negative ``affine_atol``.
    """
    if not isinstance(case, BratsCase):
        raise TypeError(f"case must be a BratsCase, got {type(case).__name__}")
    convention = label_convention(convention)
    if not affine_atol >= 0:
        raise ValueError(f"affine_atol must be >= 0 mm, got {affine_atol}")
    reasons: list[Issue] = []
    warnings: list[Issue] = []
    if not case.present_modalities:
        reasons.append(Issue(None, f"no MRI sequence found in {case.dir} (expected any of {list(MODALITIES)})"))
    if case.label is None and require_label:
        reasons.append(Issue(None, f"segmentation file missing in {case.dir}"))

    reasons.extend(Issue(f, why) for f, why in case_file_problems({**case.paths, "label": case.label}))
    files: list[tuple[str, Path]] = [(m, case.paths[m]) for m in case.present_modalities]
    if case.label is not None:
        files.append(("label", case.label))
    ref: tuple[Path, tuple[int, ...], np.ndarray] | None = None
    for key, path in files:
        read = read_nifti(path, label=key == "label")  # header guards, shape, voxels, intensity checks
        warnings.extend(Issue(str(path), w) for w in read.warnings)
        if read.image is None or (read.data is None and read.problems):
            reasons.extend(Issue(str(path), p) for p in read.problems)
            continue
        shape = tuple(int(v) for v in read.image.shape[:3])
        affine = np.asarray(read.image.affine, dtype=float)
        if ref is None:
            ref = (path, shape, affine)
        else:
            ref_path, ref_shape, ref_affine = ref
            if shape != ref_shape:
                reasons.append(Issue(str(path), f"shape {shape} differs from {ref_shape} of {ref_path.name}"))
            elif not np.allclose(affine, ref_affine, rtol=0.0, atol=affine_atol):
                diff = float(np.abs(affine - ref_affine).max())
                reasons.append(
                    Issue(
                        str(path),
                        f"affine differs from {ref_path.name} by up to {diff:.4g} mm (tolerance {affine_atol})",
                    )
                )
        reasons.extend(Issue(str(path), p) for p in read.problems)
        if key == "label" and read.data is not None:
            _check_label(path, read.data, convention, reasons, warnings)
        del read
    return CaseCheck(
        case=case,
        ok=not reasons,
        reasons=tuple(reasons),
        missing_modalities=case.missing_modalities,
        warnings=tuple(warnings),
        shape=None if ref is None else tuple(ref[1]),  # type: ignore[arg-type]
    )


def _crashed(case: BratsCase, err: BaseException) -> CaseCheck:
    return CaseCheck(
        case=case,
        ok=False,
        reasons=(Issue(str(case.dir), f"validation crashed ({describe_error(err)})"),),
        missing_modalities=case.missing_modalities,
    )


def validate_cases(
    cases: Iterable[BratsCase],
    convention: int | str | LabelConvention = "brats2018",
    require_label: bool = True,
    workers: int = 1,
    progress: Callable[[CaseCheck], None] | None = None,
) -> list[CaseCheck]:
    """Validate many cases, optionally in a process pool; results keep the input order.

    Args:
        cases: cases to check.
        convention: label convention (or release year).
        require_label: passed to :func:`validate_case`.
        workers: processes to use (1 = in this process).
        progress: called with each result as it completes.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    convention = label_convention(convention)
    todo: Sequence[BratsCase] = list(cases)
    results: list[CaseCheck | None] = [None] * len(todo)
    if workers == 1 or len(todo) < 2:
        for i, case in enumerate(todo):
            try:
                results[i] = validate_case(case, convention, require_label)
            except Exception as err:  # as a dead pool worker below: this case is rejected, the scan goes on
                results[i] = _crashed(case, err)
            if progress is not None:
                progress(results[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]
    # workers ignore Ctrl-C: the main process stops them (no traceback from each worker)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo), os.cpu_count() or 1),
        initializer=signal.signal,
        initargs=(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        futures = [pool.submit(validate_case, case, convention, require_label) for case in todo]
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result()
            except Exception as err:  # a dead worker must not stop the scan
                results[i] = _crashed(todo[i], err)
            if progress is not None:
                progress(results[i])  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results  # type: ignore[return-value]
