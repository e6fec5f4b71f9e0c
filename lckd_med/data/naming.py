"""BraTS file naming, written once: NIfTI extensions, file stems, sequence suffixes of both naming schemes.

Dataset discovery (:mod:`lckd_med.data.layouts`), batch inference's case folders (:mod:`lckd_med.inference.batch`)
and the folder scorer (:mod:`lckd_med.reports.folder_scores`) all read file names through these functions.
"""

from __future__ import annotations

from lckd_med.constants import RELEASE_FILE_SUFFIXES, SEGMENTATION_SUFFIX

__all__ = ["NIFTI_EXTENSIONS", "SEPARATORS", "is_nifti", "nifti_stem", "match_sequence_file", "case_prefix"]

#: NIfTI file extensions, the compressed one first (preferred when a case has both).
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
#: Separators between case id and sequence suffix: ``_`` (2018-2021) and ``-`` (2023+).
SEPARATORS: tuple[str, ...] = ("_", "-")

# suffix (lower case) -> modality key, over both naming schemes
_SUFFIX_TO_MODALITY: dict[str, str] = {
    suffix.lower(): mod for scheme in RELEASE_FILE_SUFFIXES.values() for mod, suffix in scheme.items()
}


def is_nifti(name: str) -> bool:
    """``name`` ends in ``.nii.gz`` or ``.nii`` (any case)."""
    return name.lower().endswith(NIFTI_EXTENSIONS)


def nifti_stem(name: str) -> str | None:
    """``name`` without its NIfTI extension (case kept), or None when it is not a NIfTI file name."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def match_sequence_file(filename: str) -> str | None:
    """Modality key of a BraTS-named sequence file, or None (segmentations, hidden and other files).

    Matches on the suffix only, so the prefix may differ from the case folder name: ``X_flair.nii.gz`` and
    ``X-t2f.nii.gz`` are FLAIR, ``X_t1ce.nii`` and ``X-t1c.nii.gz`` T1ce; ``_`` and ``-`` are both accepted
    as separator, case is ignored. ``*_seg`` / ``*-seg`` files give None.
    """
    stem = nifti_stem(filename)
    if stem is None or filename.startswith("."):
        return None
    for sep in SEPARATORS:
        if sep in stem:
            suffix = stem.rsplit(sep, 1)[1].lower()
            if suffix == SEGMENTATION_SUFFIX:
                return None
            if suffix in _SUFFIX_TO_MODALITY:
                return _SUFFIX_TO_MODALITY[suffix]
    return None


def case_prefix(filename: str) -> str | None:
    """The case part of a BraTS-named sequence or segmentation file (``Brats18_X_1`` of ``Brats18_X_1_t1ce.nii.gz``,
    ``BraTS-GLI-00000-000`` of ``BraTS-GLI-00000-000-seg.nii.gz``), or None for any other name."""
    stem = nifti_stem(filename)
    if stem is None or filename.startswith("."):
        return None
    for sep in SEPARATORS:
        if sep in stem:
            prefix, suffix = stem.rsplit(sep, 1)
            if prefix and (suffix.lower() == SEGMENTATION_SUFFIX or suffix.lower() in _SUFFIX_TO_MODALITY):
                return prefix
    return None
