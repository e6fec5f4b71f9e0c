"""Datalist JSON: cross-validation folds of the usable cases, and the rejected ones with their reasons.

Format (MONAI decathlon-style, written by ``python -m data_prep.brats``)::

    {"meta": {"release": 2018, "label_convention": "brats2018", "modalities": ["flair", "t1", "t1ce", "t2"],
              "modality_spec": {"name": "brats", "names": [...], "channels": [1, 1, 1, 1], "spatial_dims": 3,
                                "file_suffixes": {...}},
              "regions": ["ET", "TC", "WT"], "folds": 5, "seed": 0, "test_fold": 0, "val_fold": 1,
              "dataset_dir": "<abs>", "layout": "brats2018", "tool": "data_prep.brats", "version": "0.1.0"},
     "training": [entry, ...], "validation": [entry, ...], "testing": [entry, ...],
     "rejected": [{"case_id": str, "file": str | None, "reason": str}, ...]}
    entry = {"case_id": str, "flair": path | None, "t1": ..., "t1ce": ..., "t2": ..., "label": path | None,
             "grade": "HGG" | "LGG" | None, "fold": int}

Folds: usable cases are sorted by ``case_id``, grouped by grade (HGG, LGG, unknown), shuffled within each
group by a hash of ``seed`` and the case id, then dealt to folds in turn. Each grade is thus spread evenly over
the folds and fold sizes differ by at most one. ``testing`` = fold ``test_fold`` (none when ``None``),
``validation`` = fold ``val_fold``, ``training`` = every other fold.

Datalists made from case-id lists (a published protocol, ``--protocol lckd2018``, or ``--split_lists``;
:mod:`lckd_med.data.splits`) have no folds: their ``meta`` holds ``split_lists`` (source, missing and unlisted case
ids) instead, and ``validation_in_training: true`` when the validation cases are also training cases (the LCKD
reference elects on training cases); only then may a case be in both ``training`` and ``validation``.

``meta.modality_spec`` is the :class:`~lckd_med.modalities.ModalitySpec` of the data (:func:`datalist_spec`); a
datalist without it (written before specs existed) is BraTS. Entries then hold one path key per modality of the
spec (``"rgb"``, ``"depth"``, ... for another modality set) instead of the four BraTS sequences; ``meta.modalities``
must equal the spec's names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lckd_med import __version__
from lckd_med.constants import MODALITIES, REGIONS, LabelConvention, label_convention
from lckd_med.data.layouts import GRADES, LAYOUTS, parse_release
from lckd_med.data.validation import CaseCheck
from lckd_med.modalities import BRATS, ModalitySpec, spec_of
from lckd_med.utils.io import write_text_atomic

__all__ = [
    "SPLITS",
    "ENTRY_KEYS",
    "TOOL_NAME",
    "check_split_args",
    "assign_folds",
    "case_entry",
    "new_datalist",
    "make_datalist",
    "validate_datalist",
    "write_datalist",
    "is_unchanged_datalist",
    "read_datalist",
    "load_datalist",
    "datalist_spec",
    "split_counts",
    "training_spacing",
    "SPACING_SAMPLE",
]

#: Split names of a datalist holding case entries, in file order.
SPLITS: tuple[str, ...] = ("training", "validation", "testing")
#: Keys of one case entry, in file order.
ENTRY_KEYS: tuple[str, ...] = ("case_id", *MODALITIES, "label", "grade", "fold")
TOOL_NAME = "data_prep.brats"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_split_args(folds: int, seed: int, test_fold: int | None, val_fold: int) -> None:
    """Validate fold arguments.

    Rules: ``folds`` is an int >= 2 (>= 3 when there is a test fold, so training keeps a fold); ``seed`` is
    an int >= 0; ``val_fold`` and ``test_fold`` lie in ``[0, folds)`` and differ; ``test_fold`` may be
    ``None`` (no testing split).

    Raises:
        TypeError: a value of the wrong type.
        ValueError: a value out of range, naming the argument.
    """
    if not _is_int(folds):
        raise TypeError(f"folds must be an int, got {folds!r}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not _is_int(val_fold):
        raise TypeError(f"val_fold must be an int, got {val_fold!r}")
    if test_fold is not None and not _is_int(test_fold):
        raise TypeError(f"test_fold must be an int or None, got {test_fold!r}")
    min_folds = 2 if test_fold is None else 3
    if folds < min_folds:
        need = (
            "a validation fold and training folds"
            if test_fold is None
            else "a test fold, a validation fold and training folds"
        )
        raise ValueError(f"folds must be >= {min_folds} to hold {need}, got {folds}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 <= val_fold < folds:
        raise ValueError(f"val_fold must be in [0, {folds - 1}], got {val_fold}")
    if test_fold is not None and not 0 <= test_fold < folds:
        raise ValueError(f"test_fold must be in [0, {folds - 1}] or None, got {test_fold}")
    if test_fold is not None and test_fold == val_fold:
        raise ValueError(f"test_fold and val_fold must differ (both {val_fold}): validation would be the test set")


def assign_folds(grades: Mapping[str, str | None], folds: int, seed: int = 0) -> dict[str, int]:
    """Stratified, balanced, order-independent fold of each case.

    Args:
        grades: case id -> ``"HGG"``, ``"LGG"`` or ``None`` (unknown grade is its own stratum).
        folds: number of folds (>= 1).
        seed: seed of the shuffle; the same seed and case set always give the same folds.

    Returns:
        case id -> fold in ``[0, folds)``.
    """
    if not _is_int(folds) or folds < 1:
        raise ValueError(f"folds must be an int >= 1, got {folds!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    strata = sorted(set(grades.values()), key=lambda g: (g is None, g or ""))
    order: list[str] = []
    for grade in strata:
        members = [cid for cid, g in grades.items() if g == grade]
        # a keyed hash, not an RNG stream: the shuffle is the same on any machine and library version
        order.extend(sorted(members, key=lambda cid: (hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest(), cid)))
    # dealing the concatenated strata in turn balances each stratum and the fold sizes at once
    return {cid: k % folds for k, cid in enumerate(order)}


def case_entry(check: CaseCheck, fold: int | None = None) -> dict[str, Any]:
    """One split entry of a validated case: id, absolute sequence and label paths, grade, and ``fold`` if given."""
    case = check.case
    entry: dict[str, Any] = {"case_id": case.case_id}
    for m in MODALITIES:
        p = case.paths.get(m)
        entry[m] = None if p is None else str(Path(p).resolve())
    entry["label"] = None if case.label is None else str(Path(case.label).resolve())
    entry["grade"] = case.grade
    if fold is not None:
        entry["fold"] = int(fold)
    return entry


def new_datalist(
    checks: Iterable[CaseCheck],
    *,
    release: int | str,
    layout: str,
    dataset_dir: str | os.PathLike,
    convention: int | str | LabelConvention | None,
    split_meta: dict[str, Any],
) -> tuple[dict[str, Any], list[CaseCheck]]:
    """What every datalist maker starts from: the checked inputs and a datalist with its ``meta`` block, empty
    splits and one ``rejected`` record per reason of every rejected case.

    Args:
        checks: results of :func:`lckd_med.data.validation.validate_case`, in any order.
        release, layout, dataset_dir, convention: as in :func:`make_datalist`.
        split_meta: how the splits are made (folds and seed, or lists), written into ``meta`` after the
            conventions.

    Returns:
        ``(datalist, checks as a list)``.

    Raises:
        TypeError / ValueError: an unknown release or layout, a non-``CaseCheck``, a case id given twice.
    """
    year = parse_release(release)
    conv = label_convention(year if convention is None else convention)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    checks = list(checks)
    for c in checks:
        if not isinstance(c, CaseCheck):
            raise TypeError(f"checks must hold CaseCheck objects, got {type(c).__name__}")
    dupes = sorted(cid for cid, n in Counter(c.case.case_id for c in checks).items() if n > 1)
    if dupes:
        raise ValueError(f"case ids given more than once: {dupes}")
    meta = {
        "release": year,
        "label_convention": conv.name,
        "modalities": list(MODALITIES),
        "modality_spec": BRATS.to_dict(),
        "regions": list(REGIONS),
    }
    meta |= split_meta
    meta |= {
        "dataset_dir": str(Path(dataset_dir).expanduser().resolve()),
        "layout": layout,
        "tool": TOOL_NAME,
        "version": __version__,
    }
    out: dict[str, Any] = {"meta": meta, **{split: [] for split in SPLITS}, "rejected": []}
    for c in sorted((c for c in checks if not c.ok), key=lambda c: c.case.case_id):
        for issue in c.reasons:
            out["rejected"].append({"case_id": c.case.case_id, "file": issue.file, "reason": issue.reason})
    return out, checks


def make_datalist(
    checks: Iterable[CaseCheck],
    folds: int = 5,
    seed: int = 0,
    test_fold: int | None = 0,
    val_fold: int = 1,
    *,
    release: int | str,
    layout: str,
    dataset_dir: str | os.PathLike,
    convention: int | str | LabelConvention | None = None,
) -> dict[str, Any]:
    """Datalist dictionary of validated cases (see the module docstring for the format).

    Usable cases (``check.ok``) are split by :func:`assign_folds`; every reason of a rejected case becomes
    one ``rejected`` record. Rejected cases take no fold, so folds depend only on the usable cases.

    Args:
        checks: results of :func:`lckd_med.data.validation.validate_case`, in any order.
        folds, seed, test_fold, val_fold: see :func:`check_split_args`.
        release: BraTS release year written to ``meta``.
        layout: layout id written to ``meta``.
        dataset_dir: dataset folder written to ``meta`` (made absolute).
        convention: label convention; default: that of ``release``.

    Raises:
        TypeError / ValueError: bad argument, or a case id given twice.
    """
    check_split_args(folds, seed, test_fold, val_fold)
    split_meta = {
        "folds": int(folds),
        "seed": int(seed),
        "test_fold": None if test_fold is None else int(test_fold),
        "val_fold": int(val_fold),
    }
    out, checks = new_datalist(
        checks, release=release, layout=layout, dataset_dir=dataset_dir, convention=convention, split_meta=split_meta
    )
    usable = sorted((c for c in checks if c.ok), key=lambda c: c.case.case_id)
    fold_of = assign_folds({c.case.case_id: c.case.grade for c in usable}, folds, seed)
    for c in usable:
        fold = fold_of[c.case.case_id]
        split = "testing" if fold == test_fold else "validation" if fold == val_fold else "training"
        out[split].append(case_entry(c, fold))
    return out


def validate_datalist(d: Any, source: str = "datalist") -> None:
    """Check a datalist dictionary against the format.

    Raises:
        ValueError: naming ``source`` and what is wrong (missing meta, wrong modality order, bad entry,
            case in two splits, ...).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: top level must be a JSON object, got {type(d).__name__}")
    meta = d.get("meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: missing 'meta' object")
    spec = datalist_spec(d, source)
    names = list(spec.names)
    if meta.get("modalities") != names:
        raise ValueError(f"{source}: meta.modalities must be {names} (channel order), got {meta.get('modalities')!r}")
    if "regions" in meta and meta["regions"] != list(REGIONS):
        raise ValueError(f"{source}: meta.regions must be {list(REGIONS)}, got {meta['regions']!r}")
    if "label_convention" in meta:
        try:
            label_convention(meta["label_convention"])
        except ValueError as err:
            raise ValueError(f"{source}: meta.label_convention: {err}") from None
    # other top-level keys (decathlon 'name', 'description', ...) are allowed and ignored
    # a published protocol may elect on training cases (the LCKD reference does): said explicitly in meta
    val_in_train = meta.get("validation_in_training") is True
    seen: dict[str, str] = {}
    for split in SPLITS:
        entries = d.get(split, [])
        if not isinstance(entries, list):
            raise ValueError(f"{source}: '{split}' must be a list")
        for i, e in enumerate(entries):
            where = f"{source}: {split}[{i}]"
            if not isinstance(e, dict):
                raise ValueError(f"{where} must be an object")
            cid = e.get("case_id")
            if not isinstance(cid, str) or not cid:
                raise ValueError(f"{where}: 'case_id' must be a non-empty string")
            where = f"{source}: {split} case {cid}"
            missing = [k for k in (*names, "label") if k not in e]
            if missing:
                raise ValueError(f"{where}: missing keys {missing} (every entry needs {names} and 'label')")
            for k in (*names, "label"):
                if e[k] is not None and not (isinstance(e[k], str) and e[k]):
                    raise ValueError(f"{where}: '{k}' must be a path string or null, got {e[k]!r}")
            if all(e[m] is None for m in names):
                raise ValueError(f"{where}: no sequence path (all of {names} are null)")
            if e.get("grade") not in (None, *GRADES):
                raise ValueError(f"{where}: 'grade' must be one of {list(GRADES)} or null, got {e.get('grade')!r}")
            if "fold" in e and not _is_int(e["fold"]):
                raise ValueError(f"{where}: 'fold' must be an int, got {e['fold']!r}")
            if cid in seen and not (val_in_train and {seen[cid], split} == {"training", "validation"}):
                raise ValueError(f"{where}: case also listed in '{seen[cid]}' (splits must not overlap)")
            seen.setdefault(cid, split)
    rejected = d.get("rejected", [])
    if not isinstance(rejected, list) or not all(
        isinstance(r, dict) and "case_id" in r and "reason" in r for r in rejected
    ):
        raise ValueError(f"{source}: 'rejected' must be a list of objects with 'case_id', 'file' and 'reason'")


def _content_hash(d: Mapping[str, Any]) -> str:
    """SHA-256 of a datalist's content without its own ``meta.content_sha256`` (key order and spacing ignored)."""
    body = {**d, "meta": {k: v for k, v in d.get("meta", {}).items() if k != "content_sha256"}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def is_unchanged_datalist(path: str | os.PathLike) -> bool:
    """``path`` is a datalist lckd_med wrote and nobody edited since: its ``meta.content_sha256`` (recorded by
    :func:`write_datalist`) matches its content. Such a file is lckd_med's to regenerate; an edited one is the user's."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return isinstance(d, dict) and d["meta"]["content_sha256"] == _content_hash(d)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_datalist(d: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate and write a datalist atomically (temporary file in the same folder, then ``os.replace``), recording
    the hash of its content in ``meta.content_sha256``.

    An existing file at ``path`` is replaced only when it is a datalist lckd_med wrote and nobody edited since
    (:func:`is_unchanged_datalist`), or with ``overwrite``; a scan given by mistake, another file or a hand-edited
    datalist is left untouched.

    Returns:
        The absolute path written.

    Raises:
        ValueError: the datalist does not follow the format.
        IsADirectoryError: ``path`` is a folder.
        FileExistsError: ``path`` exists and is not lckd_med's to replace (naming the file and ``--overwrite``).
    """
    d = dict(d)
    validate_datalist(d)
    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise IsADirectoryError(f"datalist output is a folder, expected a file path: {out}")
    if out.exists() and not overwrite and not is_unchanged_datalist(out):
        try:
            read_datalist(out)
            what = "a datalist edited since lckd_med wrote it (or written by another tool)"
        except (ValueError, OSError):
            what = "not a datalist"
        raise FileExistsError(
            f"{out} exists and is {what}; it was left untouched: choose another output path or pass --overwrite "
            "to replace it"
        )
    d["meta"] = {**d["meta"], "content_sha256": _content_hash(d)}
    write_text_atomic(out, json.dumps(d, indent=2) + "\n")
    return out


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a whole datalist file; relative paths in entries resolve against its folder.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a valid datalist (message names the file).
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"datalist file not found: {src}")
    try:
        d = json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{src}: not a valid JSON file ({err})") from None
    validate_datalist(d, source=str(src))
    base = src.resolve().parent
    names = datalist_spec(d).names
    for split in SPLITS:
        for e in d.get(split, []):
            for k in (*names, "label"):
                if e[k] is not None and not os.path.isabs(e[k]):
                    e[k] = str((base / e[k]).resolve())
    return d


def load_datalist(path: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Entries of one split of a datalist file (validated; see :func:`read_datalist`).

    Args:
        path: datalist JSON file.
        split: one of :data:`SPLITS`.

    Returns:
        Entry dictionaries with keys ``case_id``, the modality keys (in :data:`MODALITIES` order), ``label``,
        ``grade`` and ``fold``; missing sequences are ``None``.

    Raises:
        ValueError: unknown split, split absent from the file, or an invalid file.
        FileNotFoundError: no such file.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    d = read_datalist(path)
    if split not in d:
        raise ValueError(f"{path}: datalist has no '{split}' split")
    return [dict(e) for e in d[split]]


def datalist_spec(d: Mapping[str, Any], source: str = "datalist") -> ModalitySpec:
    """The modality spec a datalist records in ``meta.modality_spec`` (BraTS when absent).

    Raises:
        ValueError: naming ``source``: an invalid spec.
    """
    meta = d.get("meta") if isinstance(d, Mapping) else None
    try:
        return spec_of(meta.get("modality_spec") if isinstance(meta, Mapping) else None)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: meta.modality_spec: {err}") from None


def split_counts(d: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per split: number of cases by grade (``HGG``, ``LGG``, ``unknown``) and ``total``."""
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        counts = {g: 0 for g in (*GRADES, "unknown")}
        for e in d.get(split, []):
            counts[e.get("grade") or "unknown"] += 1
        counts["total"] = sum(counts.values())
        out[split] = counts
    return out


#: Training cases whose headers :func:`training_spacing` reads (evenly spread over the split).
SPACING_SAMPLE: int = 32


def training_spacing(path: str | os.PathLike, split: str = "training") -> list[float] | None:
    """Typical voxel size (mm) of a datalist's training cases: per sorted axis, the median over up to
    :data:`SPACING_SAMPLE` cases of the first sequence's voxel sizes, from the NIfTI headers (no voxel read).

    Training records it in the checkpoint's ``train_config`` (``voxel_spacing_mm``) so prediction can warn when an
    input's voxels are far from it. None when it cannot be told (no case, unreadable headers, not 3-D NIfTI data).
    """
    import nibabel as nib

    try:
        entries = load_datalist(path, split)
    except (OSError, ValueError):
        return None
    step = max(1, len(entries) // SPACING_SAMPLE)
    sizes = []
    for entry in entries[::step][:SPACING_SAMPLE]:
        first = next((entry[m] for m in MODALITIES if entry.get(m)), None)
        try:
            affine = np.asarray(nib.load(str(first)).affine, dtype=float)
        except Exception:  # any reader failure: this case tells nothing
            continue
        if affine.shape == (4, 4):
            sizes.append(sorted(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).tolist()))
    if not sizes:
        return None
    return [round(float(v), 4) for v in np.median(np.asarray(sizes), axis=0)]
