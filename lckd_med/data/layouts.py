"""Discovery of BraTS cases on disk for the three folder layouts the challenge has shipped.

Supported layouts (``<s>`` is one sequence suffix, files may be ``.nii.gz`` or ``.nii``):

* ``"brats2018"`` (2018, 2019): ``<root>/{HGG,LGG}/<case>/<case>_<s>.nii.gz`` with ``<s>`` in
  ``flair, t1, t1ce, t2, seg``; the grade comes from the parent folder.
* ``"flat"`` (2020, 2021): ``<root>/<case>/<case>_<s>.nii.gz``, same suffixes; grade unknown unless a
  ``name_mapping.csv`` with a ``Grade`` column sits in ``<root>`` (BraTS 2020).
* ``"brats2023"`` (2023+ GLI): ``<root>/<case>/<case>-<s>.nii.gz`` with ``<s>`` in ``t2f, t1n, t1c, t2w, seg``
  (t2f = FLAIR, t1n = T1, t1c = T1ce, t2w = T2).

Discovery only looks at file names: a missing sequence is ``None`` and a stray file or folder is reported
in :attr:`DiscoveryResult.problems`, never raised. Reading and checking the volumes is
:mod:`lckd_med.data.validation`'s job. Modality keys everywhere are :data:`lckd_med.constants.MODALITIES`
(``flair, t1, t1ce, t2``) in that order.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lckd_med.constants import (
    MODALITIES,
    RELEASE_FILE_SUFFIXES,
    SEGMENTATION_SUFFIX,
    LabelConvention,
    label_convention,
)
from lckd_med.utils.io import printable

__all__ = [
    "LAYOUTS",
    "LAYOUT_DEFAULT_RELEASE",
    "LAYOUT_PATTERNS",
    "GRADES",
    "NIFTI_EXTENSIONS",
    "Issue",
    "BratsCase",
    "DiscoveryResult",
    "LayoutError",
    "detect_layout",
    "discover_cases",
    "guess_release",
    "parse_release",
]

#: Layout ids, in the order they are documented and offered on the command line.
LAYOUTS: tuple[str, ...] = ("brats2018", "flat", "brats2023")
#: Release assumed for a layout when the case names do not tell the year.
LAYOUT_DEFAULT_RELEASE: dict[str, int] = {"brats2018": 2018, "flat": 2021, "brats2023": 2023}
#: Human-readable pattern of each layout, used in error messages and docs.
LAYOUT_PATTERNS: dict[str, str] = {
    "brats2018": "<root>/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz",
    "flat": "<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz",
    "brats2023": "<root>/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz",
}
#: Grade folder names of the brats2018 layout (matched case-insensitively).
GRADES: tuple[str, ...] = ("HGG", "LGG")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

# Per layout: separator between case id and suffix, and the naming scheme in RELEASE_FILE_SUFFIXES.
_SCHEME: dict[str, tuple[str, str]] = {
    "brats2018": ("_", "legacy"),
    "flat": ("_", "legacy"),
    "brats2023": ("-", "2023"),
}
# Files next to the cases that are metadata, not stray data (BraTS ships survival/mapping tables).
_METADATA_EXTENSIONS = (".csv", ".xlsx", ".xls", ".txt", ".md", ".json", ".pdf")
_RELEASE_IN_NAME = re.compile(r"^brats[-_]?(\d{2}|\d{4})(?!\d)", re.IGNORECASE)


class LayoutError(ValueError):
    """The folder holds no case in any known layout (or none in the layout that was asked for)."""


@dataclass(frozen=True)
class Issue:
    """One problem found with a file or folder.

    Attributes:
        file: the offending path as a string, or ``None`` when the problem is not tied to one file
            (e.g. "segmentation missing").
        reason: human-readable explanation.
    """

    file: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}" if self.file else self.reason


@dataclass(frozen=True, eq=True)
class BratsCase:
    """One case folder as found on disk (nothing read yet).

    Attributes:
        case_id: case name (the folder name, e.g. ``"Brats18_TCIA08_436_1"``).
        dir: the case folder.
        grade: ``"HGG"``, ``"LGG"`` or ``None`` when unknown.
        paths: modality key -> file, in :data:`MODALITIES` order; ``None`` where the sequence is missing.
        label: segmentation file, or ``None`` when missing.
        layout: layout id the case was found with (one of :data:`LAYOUTS`).
    """

    case_id: str
    dir: Path
    grade: str | None
    paths: dict[str, Path | None] = field(hash=False)
    label: Path | None
    layout: str

    @property
    def present_modalities(self) -> tuple[str, ...]:
        """Modality keys whose file was found, in modality order."""
        return tuple(m for m in MODALITIES if self.paths.get(m) is not None)

    @property
    def missing_modalities(self) -> tuple[str, ...]:
        """Modality keys whose file was not found, in modality order."""
        return tuple(m for m in MODALITIES if self.paths.get(m) is None)


@dataclass(frozen=True)
class DiscoveryResult:
    """What :func:`discover_cases` found.

    Attributes:
        root: the dataset folder (absolute).
        layout: layout id used.
        release: BraTS release year (guessed from the case names or the layout, or given).
        convention: label convention of that release (ET = 4 up to 2022, 3 from 2023).
        cases: cases sorted by ``case_id``.
        problems: stray files and folders, unrecognised or ambiguous files, duplicate case ids.
    """

    root: Path
    layout: str
    release: int
    convention: LabelConvention
    cases: tuple[BratsCase, ...]
    problems: tuple[Issue, ...]


def _is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_EXTENSIONS)


def _stem(name: str) -> str:
    low = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _suffix_map(layout: str) -> dict[str, str]:
    """File suffix -> key (modality key or ``"label"``) for a layout."""
    _, scheme = _SCHEME[layout]
    out = {suffix.lower(): key for key, suffix in RELEASE_FILE_SUFFIXES[scheme].items()}
    out[SEGMENTATION_SUFFIX] = "label"
    return out


def _parse_name(name: str, layout: str) -> tuple[str, str] | None:
    """``(prefix, key)`` of a recognised NIfTI file name in ``layout``, else ``None``."""
    if not _is_nifti(name):
        return None
    sep, _ = _SCHEME[layout]
    stem = _stem(name)
    if sep not in stem:
        return None
    prefix, token = stem.rsplit(sep, 1)
    key = _suffix_map(layout).get(token.lower())
    return (prefix, key) if key is not None else None


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def _count_recognised(folder: Path, layout: str) -> int:
    return sum(1 for e in _visible_entries(folder) if e.is_file() and _parse_name(e.name, layout) is not None)


def _grade_dirs(root: Path) -> list[tuple[str, Path]]:
    return [(e.name.upper(), Path(e.path)) for e in _visible_entries(root) if e.is_dir() and e.name.upper() in GRADES]


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset folder does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset path is not a folder: {path}")
    return path.resolve()


def _layout_help() -> str:
    return "; ".join(f"{name}: {pattern}" for name, pattern in LAYOUT_PATTERNS.items())


def _hint(root: Path) -> str:
    """Extra advice when nothing was found: the folder is one case, or the dataset sits one level down."""
    for layout in ("flat", "brats2023"):
        if _count_recognised(root, layout):
            return f" The folder itself looks like a single case: point at its parent ({root.parent})."
    for e in _visible_entries(root):
        if e.is_dir():
            try:
                detect_layout(e.path)
            except (LayoutError, OSError):
                continue
            return f" A dataset was found one level down: try {e.path}."
    return ""


def detect_layout(root: str | os.PathLike) -> str:
    """Layout id of a dataset folder, judged from its file names.

    ``brats2018`` when an ``HGG``/``LGG`` folder holds case folders; otherwise the flat layout whose file
    naming (``<case>_flair`` vs ``<case>-t2f``) matches more case folders.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        LayoutError: no case folder in any known layout.
    """
    path = _check_root(root)
    for _, gdir in _grade_dirs(path):
        if any(e.is_dir() and _count_recognised(Path(e.path), "brats2018") for e in _visible_entries(gdir)):
            return "brats2018"
    scores = {"flat": 0, "brats2023": 0}
    for e in _visible_entries(path):
        if e.is_dir():
            for layout in scores:
                scores[layout] += bool(_count_recognised(Path(e.path), layout))
    best = max(scores, key=lambda k: scores[k])
    if scores[best] == 0:
        raise LayoutError(
            f"no BraTS case found under {path}. Expected one of the layouts: {_layout_help()}.{_hint(path)}"
        )
    return best


def parse_release(release: int | str) -> int:
    """Release year from ``2021``, ``"2021"`` or ``"brats2021"``.

    Raises:
        ValueError: not a year, or a year outside what :func:`lckd_med.constants.label_convention` accepts.
    """
    text = "" if isinstance(release, bool) else str(release).strip().lower().removeprefix("brats")
    if not text.isdigit():
        raise ValueError(f"release must be a BraTS year such as 2018 or 2023, got {release!r}")
    year = int(text)
    label_convention(year)  # raises on an implausible year
    return year


def guess_release(case_ids: list[str] | tuple[str, ...], layout: str) -> int:
    """Release year from case names (``Brats18_*`` -> 2018, ``BraTS2021_*`` -> 2021), else the layout default."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    years: Counter[int] = Counter()
    for cid in case_ids:
        m = _RELEASE_IN_NAME.match(cid)
        if m:
            y = int(m.group(1))
            years[y + 2000 if y < 100 else y] += 1
    if years:
        year = years.most_common(1)[0][0]
        # a legacy-named case in the 2023 layout (or vice versa) cannot be that year: trust the layout
        if (year >= 2023) == (layout == "brats2023"):
            return year
    return LAYOUT_DEFAULT_RELEASE[layout]


def _read_name_mapping(root: Path, problems: list[Issue]) -> dict[str, str]:
    """case id -> grade from BraTS 2020's ``name_mapping.csv`` (any column may hold the case id)."""
    path = root / "name_mapping.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        problems.append(Issue(str(path), f"could not read grades from name mapping ({err}); grades left unknown"))
        return {}
    grade_col = next((c for c in (rows[0].keys() if rows else []) if c and c.strip().lower() == "grade"), None)
    if grade_col is None:
        problems.append(Issue(str(path), "name mapping has no 'Grade' column; grades left unknown"))
        return {}
    out: dict[str, str] = {}
    for row in rows:
        grade = (row.get(grade_col) or "").strip().upper()
        if grade not in GRADES:
            continue
        for col, value in row.items():
            if col != grade_col and isinstance(value, str) and value.strip():  # rows with extra cells hold lists
                out[value.strip()] = grade
    return out


def _collect_case(folder: Path, layout: str, grade: str | None, problems: list[Issue]) -> BratsCase | None:
    """A case from one folder, or ``None`` (reported once) when the folder has no recognised file."""
    case_id = folder.name
    if printable(case_id) != case_id:  # would break every report and log that names it
        problems.append(Issue(printable(str(folder)), "ignored: folder name is not valid UTF-8; rename the folder"))
        return None
    try:
        os.scandir(folder).close()
    except OSError as err:  # unreadable: say so rather than "no file named as in layout"
        problems.append(
            Issue(str(folder), f"ignored: cannot read case folder ({err.strerror}); make it readable or move it")
        )
        return None
    candidates: dict[str, list[tuple[bool, Path]]] = {}
    local: list[Issue] = []
    unrecognised: list[str] = []
    for e in _visible_entries(folder):
        if e.is_dir():
            local.append(Issue(e.path, "ignored: unexpected sub-folder inside a case folder"))
            continue
        parsed = _parse_name(e.name, layout)
        if parsed is None:
            if _is_nifti(e.name):
                unrecognised.append(e.name)
                local.append(
                    Issue(
                        e.path,
                        f"ignored: NIfTI file name not recognised for layout {layout} ({LAYOUT_PATTERNS[layout]})",
                    )
                )
            elif not e.name.lower().endswith(_METADATA_EXTENSIONS):
                local.append(Issue(e.path, "ignored: not a NIfTI file"))
            continue
        prefix, key = parsed
        candidates.setdefault(key, []).append((prefix == case_id, Path(e.path)))
    if not candidates:
        # one note per folder: a non-case folder is not worth a line per file
        found = f" (NIfTI files found: {', '.join(unrecognised[:3])}{', ...' if len(unrecognised) > 3 else ''})"
        problems.append(
            Issue(
                str(folder),
                f"ignored: folder has no file named as in layout {layout} ({LAYOUT_PATTERNS[layout]})"
                + (found if unrecognised else ""),
            )
        )
        return None
    problems.extend(local)
    chosen: dict[str, Path | None] = {}
    for key, found in candidates.items():
        exact = [p for is_exact, p in found if is_exact] or [p for _, p in found]
        # prefer .nii.gz (the distributed form) when both compressed and uncompressed copies exist
        exact.sort(key=lambda p: (not p.name.lower().endswith(".nii.gz"), p.name))
        if len(exact) > 1:
            problems.append(
                Issue(
                    str(folder),
                    f"several files for '{key}' ({', '.join(p.name for p in exact)}); using {exact[0].name}",
                )
            )
        chosen[key] = exact[0]
    paths = {m: chosen.get(m) for m in MODALITIES}
    return BratsCase(case_id=case_id, dir=folder, grade=grade, paths=paths, label=chosen.get("label"), layout=layout)


def _drop_linked_duplicates(cases: list[BratsCase], problems: list[Issue]) -> list[BratsCase]:
    """Keep one case per real folder: a symlinked copy of a case folder would land in another fold (a leak)."""
    first: dict[str, BratsCase] = {}
    for case in sorted(cases, key=lambda c: (c.dir.is_symlink(), c.case_id)):  # the real folder wins
        real = os.path.realpath(case.dir)
        if real in first:
            problems.append(
                Issue(
                    str(case.dir),
                    f"ignored: same folder as case {first[real].case_id} (linked); a case must appear once",
                )
            )
        else:
            first[real] = case
    kept = {id(c) for c in first.values()}
    return [c for c in cases if id(c) in kept]


def discover_cases(
    root: str | os.PathLike, layout: str | None = None, release: int | str | None = None
) -> DiscoveryResult:
    """Find the cases of a BraTS dataset folder.

    Args:
        root: dataset folder.
        layout: one of :data:`LAYOUTS`, or ``None``/``"auto"`` to detect it.
        release: BraTS release year forcing the label convention (2023+ -> ET = 3, else 4); ``None`` guesses
            it from the case names, falling back to the layout's default.

    Returns:
        A :class:`DiscoveryResult`; its ``cases`` may be empty when a forced layout matches nothing.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        LayoutError: auto-detection found no case.
        ValueError: unknown ``layout`` or ``release``.
    """
    path = _check_root(root)
    if layout is None or layout == "auto":
        layout = detect_layout(path)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    problems: list[Issue] = []
    cases: list[BratsCase] = []

    if layout == "brats2018":
        grade_dirs = _grade_dirs(path)
        for e in _visible_entries(path):
            if (e.is_dir() and e.name.upper() in GRADES) or (
                e.is_file() and e.name.lower().endswith(_METADATA_EXTENSIONS)
            ):
                continue
            problems.append(Issue(e.path, "ignored: brats2018 layout expects only HGG/ and LGG/ folders here"))
        for grade, gdir in grade_dirs:
            for e in _visible_entries(gdir):
                if e.is_dir():
                    case = _collect_case(Path(e.path), layout, grade, problems)
                    if case is not None:
                        cases.append(case)
                elif not e.name.lower().endswith(_METADATA_EXTENSIONS):
                    problems.append(Issue(e.path, "ignored: stray file among case folders"))
    else:
        grades = _read_name_mapping(path, problems)
        for e in _visible_entries(path):
            if e.is_dir():
                case = _collect_case(Path(e.path), layout, grades.get(e.name), problems)
                if case is not None:
                    cases.append(case)
            elif not e.name.lower().endswith(_METADATA_EXTENSIONS):
                problems.append(Issue(e.path, "ignored: stray file among case folders"))

    cases.sort(key=lambda c: (c.case_id, str(c.dir)))
    cases = _drop_linked_duplicates(cases, problems)
    unique: list[BratsCase] = []
    for case in cases:
        if unique and unique[-1].case_id == case.case_id:
            problems.append(Issue(str(case.dir), f"ignored: duplicate case id {case.case_id} (kept {unique[-1].dir})"))
            continue
        unique.append(case)

    year = guess_release([c.case_id for c in unique], layout) if release is None else parse_release(release)
    return DiscoveryResult(
        root=path,
        layout=layout,
        release=year,
        convention=label_convention(year),
        cases=tuple(unique),
        problems=tuple(problems),
    )
