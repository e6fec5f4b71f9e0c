"""Reading one NIfTI volume and listing what is wrong with it, written once.

Dataset validation (:func:`lckd_med.data.validation.validate_case`) and the inference geometry checks
(:func:`lckd_med.inference.geometry.read_volume`) read every file through :func:`read_nifti`, so a file gets the
same verdict, in the same words, whichever path reads it. The header guards (implausible voxel count for the file
size, NaN affine) and the z-score overflow check live in :mod:`lckd_med.data.validation` and run here before /
after the voxels are read.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["NiftiRead", "read_nifti", "read_image", "intensity_problems", "describe_error"]


def describe_error(err: BaseException) -> str:
    """One line for a reader's exception (corrupt gzip streams named as such)."""
    text = " ".join(str(err).split()) or "no details"
    if isinstance(err, (zlib.error, gzip.BadGzipFile)):
        return f"corrupt gzip data: {text}"
    return f"{type(err).__name__}: {text}"


def intensity_problems(data: np.ndarray) -> list[str]:
    """What makes an image volume unusable: non-finite voxels (counted), all zero, intensities that overflow
    the float32 z-score of the pipelines, or content that cannot be an MRI of a head
    (:func:`lckd_med.data.validation.head_mri_problem`). Empty when fine."""
    from lckd_med.data.validation import head_mri_problem, normalisation_problem

    problems = []
    nonfinite = 0
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(np.count_nonzero(np.isinf(data)))
        nonfinite = n_nan + n_inf
        problems.append(
            f"non-finite intensities: {n_nan} NaN and {n_inf} Inf voxels of {data.size}; fix or leave out this file"
        )
    # NaN and Inf count as non-zero, so remove them before judging "all zero"
    if int(np.count_nonzero(data)) - nonfinite == 0:
        problems.append("image is all zero (empty volume); leave it out if the sequence was not acquired")
    elif not nonfinite:
        problem = normalisation_problem(data) or head_mri_problem(data)
        if problem:
            problems.append(problem)
    return problems


@dataclass(frozen=True)
class NiftiRead:
    """What :func:`read_nifti` found.

    Attributes:
        path: the file (for an image held in memory, :func:`read_image`, a name such as ``<flair array>``).
        image: the nibabel image (header), None when the file could not be opened as NIfTI.
        data: voxels ``(H, W, D)`` in the file's data type (trailing singleton axes dropped), None when unread.
        problems: why the file cannot be used, without the path (callers name the file); empty when usable.
        warnings: notes that do not make it unusable (a squeezed singleton axis).
    """

    path: Path
    image: nib.spatialimages.SpatialImage | None
    data: np.ndarray | None
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def read_nifti(path: str | os.PathLike, label: bool = False, strict: bool = False, read_data: bool = True) -> NiftiRead:
    """Open one NIfTI file, check its header, read its voxels and list its problems; never raises for a bad file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        label: a segmentation (intensity checks skipped; the caller checks the label values).
        strict: refuse trailing singleton axes (``(H, W, D, 1)``) instead of squeezing them with a warning.
        read_data: read the voxels (False: header checks only).

    Returns:
        :class:`NiftiRead`; reading stops at the first problem that makes the rest meaningless (unreadable file,
        implausible header, wrong shape, unreadable voxels).
    """
    from lckd_med.data.validation import check_volume_header

    path = Path(path)

    def fail(img: nib.spatialimages.SpatialImage | None, why: str, warnings: tuple[str, ...] = ()) -> NiftiRead:
        return NiftiRead(path, img, None, (why,), warnings)

    if path.is_dir():
        return fail(None, "is a folder, expected a NIfTI file (.nii.gz or .nii)")
    if not path.is_file():
        return fail(None, "does not exist")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable / non-image files
        return fail(None, f"cannot read as NIfTI ({describe_error(err)})")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return fail(None, f"not a NIfTI image (read as {type(img).__name__})")
    try:
        check_volume_header(img, path)  # implausible size or NaN affine: refused before any voxel is read
    except ValueError as err:
        return fail(img, str(err).removeprefix(f"{path}: "))
    shape = tuple(int(s) for s in img.shape)
    warnings: tuple[str, ...] = ()
    if len(shape) > 3 and all(s == 1 for s in shape[3:]) and not strict:
        warnings = (f"{len(shape)}-D file with a single volume {shape}: squeezed to 3-D",)
    elif len(shape) != 3:
        return fail(img, f"not a single 3D volume (shape {shape}): expected a 3-D volume, one per file")
    if not read_data:
        return NiftiRead(path, img, None, (), warnings)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape[:3])
        problems = () if label else tuple(intensity_problems(data))
    except MemoryError:  # the header's size fitted the memory estimate, but not the memory at hand
        return fail(img, f"not enough memory to read and check its {shape[:3]} voxels; free memory or check the file")
    except Exception as err:  # truncated or corrupt gzip streams surface here, not at nib.load
        return fail(img, f"cannot read image data, file truncated or corrupt ({describe_error(err)})", warnings)
    return NiftiRead(path, img, data, problems, warnings)


def read_image(image: nib.spatialimages.SpatialImage, name: str, strict: bool = False) -> NiftiRead:
    """:func:`read_nifti` for an image held in memory (a ``nib.Nifti1Image`` built from an array and an affine, or
    one a caller loaded): the same header checks that do not concern a file (finite, non-singular affine, real data),
    shape and intensity checks, the same words; never raises for a bad image.

    Args:
        image: the image.
        name: how messages name it (callers prefix it, e.g. ``"flair array"``).
        strict: refuse trailing singleton axes instead of squeezing them.
    """
    from lckd_med.data.validation import image_header_problem

    path = Path(name)
    problem = image_header_problem(image)
    if problem:
        return NiftiRead(path, image, None, (problem,))
    shape = tuple(int(s) for s in image.shape)
    warnings: tuple[str, ...] = ()
    if len(shape) > 3 and all(s == 1 for s in shape[3:]) and not strict:
        warnings = (f"{len(shape)}-D image with a single volume {shape}: squeezed to 3-D",)
    elif len(shape) != 3:
        return NiftiRead(path, image, None, (f"not a single 3D volume (shape {shape}): expected a 3-D volume",))
    data = np.asanyarray(image.dataobj).reshape(shape[:3])
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        return NiftiRead(path, image, None, (f"holds {data.dtype} values; an MRI is a real-valued volume",))
    return NiftiRead(path, image, data, tuple(intensity_problems(data)), warnings)
