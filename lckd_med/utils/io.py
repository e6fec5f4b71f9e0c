"""Atomic file writing: every file lckd_med writes appears under its final name only once complete.

A file is written to a temporary name in the destination folder, flushed, then renamed over the target with
``os.replace`` (atomic on one file system). On any error the temporary file is removed, so neither a partial
output nor a stray temporary file is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "TEMP_NAME_PATTERN",
    "atomic_path",
    "write_text_atomic",
    "save_nifti_atomic",
    "save_label_map",
    "remove_stale_temporaries",
    "printable",
    "zip_entries",
]

_MULTI_SUFFIXES = (".nii.gz", ".tar.gz")
#: Names :func:`atomic_path` gives its temporary files: ``.<stem>.<8 random chars>.tmp<suffix>``.
TEMP_NAME_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in _MULTI_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix


def zip_entries(path: str | os.PathLike) -> list[str] | None:
    """Names inside a zip archive (what ``torch.save`` and TorchScript write), or None when ``path`` is not one."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None


def printable(name: str) -> str:
    """``name`` as UTF-8-safe text: bytes of a non-UTF-8 file name (Python's surrogate escapes) become ``\\xNN``,
    so printing it or writing it into a report never raises ``UnicodeEncodeError``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix; rename it to ``path`` on success.

    The suffix is kept so writers that pick the format from the name (nibabel's ``.nii.gz``, matplotlib's
    ``.png``) write the right thing. The folder is created if needed; the file gets the usual permissions
    (``0666`` less the umask, like any file the user creates; ``mkstemp`` and some writers would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    try:
        yield tmp
        os.chmod(tmp, mode)  # again: some writers (safetensors) re-create the file 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, errors: str = "strict") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        errors: codec error handler; ``"backslashreplace"`` writes characters UTF-8 cannot encode (surrogate escapes
            of non-UTF-8 file names) as ``\\xNN`` instead of failing.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors=errors, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def save_nifti_atomic(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """``nib.save`` to ``path`` atomically (the temporary name keeps ``.nii.gz`` so it is compressed too)."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def save_label_map(labels: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write a uint8 label map on ``reference``'s grid atomically: its affine, qform, sform, their codes and
    units, so the output overlays the input exactly.

    Raises:
        ValueError: ``labels`` does not have the reference's 3-D shape.
    """
    if tuple(labels.shape) != tuple(reference.shape[:3]):
        raise ValueError(
            f"{Path(path).name}: label shape {labels.shape} differs from the input's {reference.shape[:3]}"
        )
    img = nib.Nifti1Image(labels.astype(np.uint8, copy=False), reference.affine)
    q, q_code = reference.header.get_qform(coded=True)
    s, s_code = reference.header.get_sform(coded=True)
    img.header.set_qform(q, int(q_code) if q is not None else None)
    img.header.set_sform(s, int(s_code) if s is not None else None)
    img.header.set_xyzt_units(*reference.header.get_xyzt_units())
    img.header.set_data_dtype(np.uint8)
    return save_nifti_atomic(img, path)


def remove_stale_temporaries(folder: str | os.PathLike, dir_prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Remove what a killed run of ours left in ``folder``: hidden temporary files named by :func:`atomic_path`
    (:data:`TEMP_NAME_PATTERN`) and hidden working folders whose name starts with one of ``dir_prefixes``.

    Only these names are touched, so nothing a user made is removed. Two runs must not share ``folder`` at once.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.is_symlink():
            continue
        if entry.is_file() and TEMP_NAME_PATTERN.match(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and dir_prefixes and entry.name.startswith(dir_prefixes):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
