"""Published split protocols and user case-id lists turned into a datalist.

A protocol names one case-id list per split. The lists shipped here are facts of published work (case ids only):

* ``lckd2018`` -- the LCKD reference protocol on BraTS2018 (its ``datalist/BraTS18/*.csv``): ``training`` = all 285
  training cases (``train_all``), ``validation`` = 57 of them (``val``, used for the teacher election; it OVERLAPS
  training, as in the reference), ``testing`` = the 66 official BraTS2018 validation cases (``test``, labels hidden,
  scored online).
* ``lckd2018_disjoint`` -- the same lists with ``training`` = the 228 cases not in ``val`` (``train``): a validation
  fold disjoint from training (the cleaner choice, an option; the reference trains on the election cases too).

A user's own lists (``--split_lists training=a.txt validation=b.csv``) are read by :func:`read_split_list`: one case id
per line, or a CSV with a header that has a ``case_id``/``id``/``subject``/``name`` column or a ``path`` column (the
last path component, minus ``.nii.gz``/``_<suffix>`` file endings, is the case id).

:func:`datalist_from_lists` puts every usable case on disk into the splits that list it; a listed case missing on
disk and a case on disk listed nowhere are reported by name (and recorded in ``meta.split_lists``), the datalist is
still written for the rest. ``testing`` may never share a case with ``training`` or ``validation``; ``validation``
inside ``training`` is allowed only when the lists say so (``meta.validation_in_training``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lckd_med.constants import LabelConvention
from lckd_med.data.datalist import SPLITS, case_entry, new_datalist
from lckd_med.data.validation import CaseCheck

__all__ = [
    "PROTOCOLS",
    "SplitProtocol",
    "SplitReport",
    "protocol_lists",
    "read_split_list",
    "parse_split_list_args",
    "check_split_lists",
    "datalist_from_lists",
    "report_lines",
]


@dataclass(frozen=True)
class SplitProtocol:
    """A named split protocol: one packaged case-id list per split.

    Attributes:
        name: protocol id (``--protocol`` value).
        files: split -> list file under ``lckd_med/data/split_lists``.
        description: one line for ``--help`` and the datalist meta.
    """

    name: str
    files: Mapping[str, str]
    description: str


PROTOCOLS: dict[str, SplitProtocol] = {
    p.name: p
    for p in (
        SplitProtocol(
            "lckd2018",
            {
                "training": "lckd_brats18/train_all.txt",
                "validation": "lckd_brats18/val.txt",
                "testing": "lckd_brats18/test.txt",
            },
            "LCKD reference on BraTS2018: train on all 285, elect on 57 of them (overlapping), test = the 66 "
            "official validation cases (labels hidden)",
        ),
        SplitProtocol(
            "lckd2018_disjoint",
            {
                "training": "lckd_brats18/train.txt",
                "validation": "lckd_brats18/val.txt",
                "testing": "lckd_brats18/test.txt",
            },
            "LCKD BraTS2018 lists with a disjoint validation fold: train on 228, elect on the other 57, test = the 66 "
            "official validation cases",
        ),
    )
}

_ID_COLUMNS = ("case_id", "id", "subject", "subject_id", "name", "brats20id", "brats_id")
_PATH_COLUMNS = ("path", "file", "image", "folder")
_FILE_END = re.compile(r"(\.nii(\.gz)?|\.mha|\.nrrd)$", re.IGNORECASE)
_SUFFIX_END = re.compile(r"[_-](flair|t1ce|t1|t2|seg|t2f|t1n|t1c|t2w)$", re.IGNORECASE)


def protocol_lists(name: str) -> dict[str, list[str]]:
    """Case ids of each split of a packaged protocol (file order).

    Raises:
        ValueError: unknown protocol name.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {name!r}; use one of {sorted(PROTOCOLS)}")
    root = resources.files("lckd_med.data") / "split_lists"
    return {
        split: _parse_ids((root / rel).read_text(encoding="utf-8"), f"{name}:{rel}")
        for split, rel in PROTOCOLS[name].files.items()
    }


def _case_id_from_path(text: str) -> str:
    last = text.strip().replace("\\", "/").rstrip("/").split("/")[-1]
    return _SUFFIX_END.sub("", _FILE_END.sub("", last))


def _parse_ids(text: str, source: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{source}: no case id in the list")
    if "," in lines[0] or "\t" in lines[0]:
        ids = _parse_csv(text, source)
    else:
        ids = [_case_id_from_path(ln) if "/" in ln or "\\" in ln else ln for ln in lines]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{source}: case ids listed more than once: {dupes}")
    return ids


def _parse_csv(text: str, source: str) -> list[str]:
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = list(csv.reader(io.StringIO(text), dialect=dialect))
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    from_path = col is None
    if from_path:
        col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
    if col is None:
        raise ValueError(
            f"{source}: CSV header {rows[0]} has no case id column ({', '.join(_ID_COLUMNS)}) "
            f"nor a path column ({', '.join(_PATH_COLUMNS)})"
        )
    ids = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if col >= len(row) or not row[col].strip():
            raise ValueError(f"{source}: line {n} has no value in column {rows[0][col]!r}")
        ids.append(_case_id_from_path(row[col]) if from_path else row[col].strip())
    return ids


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Case ids of a list file: one id (or case path) per line, or a CSV with an id or a path column.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty list, CSV without a usable column, or an id listed twice (message names the file).
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"split list not found: {src}")
    return _parse_ids(src.read_text(encoding="utf-8-sig"), str(src))


def parse_split_list_args(items: Sequence[str]) -> dict[str, list[str]]:
    """``["training=a.txt", "validation=b.csv", ...]`` -> split -> case ids (``--split_lists`` values).

    Raises:
        ValueError: not ``SPLIT=FILE``, unknown or repeated split, or no ``training`` list.
        FileNotFoundError: a list file is missing.
    """
    lists: dict[str, list[str]] = {}
    for item in items:
        split, sep, file = str(item).partition("=")
        split = split.strip()
        if not sep or not file.strip():
            raise ValueError(f"--split_lists takes SPLIT=FILE items (SPLIT one of {SPLITS}), got {item!r}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in {item!r}; use one of {SPLITS}")
        if split in lists:
            raise ValueError(f"split {split!r} given twice in --split_lists")
        lists[split] = read_split_list(file.strip())
    if "training" not in lists:
        raise ValueError("--split_lists needs at least a training list (training=FILE)")
    return lists


@dataclass
class SplitReport:
    """What the lists and the folder disagree on.

    Attributes:
        missing: split -> listed case ids with no case folder on disk (list order).
        not_listed: usable case ids on disk that no list names (sorted).
        rejected_listed: split -> listed case ids found on disk but rejected by validation (see ``rejected``).
        counts: split -> number of cases written.
    """

    missing: dict[str, list[str]] = field(default_factory=dict)
    not_listed: list[str] = field(default_factory=list)
    rejected_listed: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def check_split_lists(lists: Mapping[str, Sequence[str]]) -> bool:
    """Check split lists before any case is read; returns whether validation cases are also training cases.

    Raises:
        ValueError: an unknown split, or testing sharing a case with training or validation.
    """
    unknown = [s for s in lists if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; use {SPLITS}")
    test = set(lists.get("testing", ()))
    for other in ("training", "validation"):
        leak = sorted(test & set(lists.get(other, ())))
        if leak:
            raise ValueError(f"the testing list shares {len(leak)} case(s) with the {other} list: {leak[:10]}")
    return bool(set(lists.get("validation", ())) & set(lists.get("training", ())))


def datalist_from_lists(
    checks: Iterable[CaseCheck],
    lists: Mapping[str, Sequence[str]],
    *,
    release: int | str,
    layout: str,
    dataset_dir: str | os.PathLike,
    convention: int | str | LabelConvention | None = None,
    source: str = "split_lists",
) -> tuple[dict[str, Any], SplitReport]:
    """Datalist whose splits follow case-id lists (entries have no ``fold``).

    Args:
        checks: results of :func:`lckd_med.data.validation.validate_case`.
        lists: split -> case ids (from :func:`protocol_lists` or :func:`parse_split_list_args`).
        release, layout, dataset_dir, convention: as in :func:`lckd_med.data.datalist.make_datalist`.
        source: protocol name or ``"split_lists"``, written to ``meta.split_lists.source``.

    Returns:
        ``(datalist, report)``; ``meta.split_lists`` records the source, the missing and the unlisted case ids.

    Raises:
        ValueError: bad lists (testing overlapping training/validation, unknown split) or arguments.
    """
    overlap = check_split_lists(lists)
    out, checks = new_datalist(
        checks,
        release=release,
        layout=layout,
        dataset_dir=dataset_dir,
        convention=convention,
        split_meta={"split_lists": {}, "validation_in_training": overlap},
    )
    on_disk = {c.case.case_id: c for c in checks}
    report = SplitReport()
    listed: set[str] = set()
    for split in SPLITS:
        ids = list(lists.get(split, ()))
        listed.update(ids)
        report.missing[split] = [i for i in ids if i not in on_disk]
        report.rejected_listed[split] = [i for i in ids if i in on_disk and not on_disk[i].ok]
        out[split] = [case_entry(on_disk[i]) for i in sorted(ids) if i in on_disk and on_disk[i].ok]
        report.counts[split] = len(out[split])
    report.not_listed = sorted(cid for cid, c in on_disk.items() if c.ok and cid not in listed)
    out["meta"]["split_lists"] = {
        "source": source,
        "listed": {s: len(lists.get(s, ())) for s in SPLITS},
        "missing": report.missing,
        "not_listed": report.not_listed,
    }
    return out, report


def report_lines(report: SplitReport, lists: Mapping[str, Sequence[str]], max_names: int = 30) -> list[str]:
    """Human-readable summary: per split listed / written / missing (by name), then the unlisted cases."""

    def names(ids: Sequence[str]) -> str:
        shown = ", ".join(ids[:max_names])
        more = len(ids) - max_names
        return shown + (f", ... and {more} more (all in the datalist's meta.split_lists)" if more > 0 else "")

    lines = []
    for split in SPLITS:
        if split not in lists:
            continue
        missing = report.missing.get(split, [])
        lines.append(
            f"  {split:<10} listed {len(lists[split]):>4}, written {report.counts.get(split, 0):>4}, "
            f"missing on disk {len(missing)}"
        )
        if missing:
            if len(missing) == len(lists[split]):
                lines.append(f"    none of the {split} cases is in this folder: {names(missing)}")
            else:
                lines.append(f"    missing: {names(missing)}")
        rejected = report.rejected_listed.get(split, [])
        if rejected:
            lines.append(f"    rejected (see above): {names(rejected)}")
    if report.not_listed:
        lines.append(f"  on disk but in no list ({len(report.not_listed)}, left out): {names(report.not_listed)}")
    return lines
