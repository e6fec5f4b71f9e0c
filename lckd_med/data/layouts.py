"""Discovery of BraTS cases on disk, anywhere below a folder, for the three folder layouts the challenge has shipped.

Supported layouts (``<s>`` is one sequence suffix, files may be ``.nii.gz`` or ``.nii``):

* ``"brats2018"`` (2018, 2019): ``<root>/{HGG,LGG}/<case>/<case>_<s>.nii.gz`` with ``<s>`` in
  ``flair, t1, t1ce, t2, seg``; the grade comes from the parent folder.
* ``"flat"`` (2020, 2021): ``<root>/<case>/<case>_<s>.nii.gz``, same suffixes; grade unknown unless a
  ``name_mapping.csv`` with a ``Grade`` column sits in ``<root>`` (BraTS 2020).
* ``"brats2023"`` (2023+ GLI): ``<root>/<case>/<case>-<s>.nii.gz`` with ``<s>`` in ``t2f, t1n, t1c, t2w, seg``
  (t2f = FLAIR, t1n = T1, t1c = T1ce, t2w = T2).

The given folder may be the dataset itself or any folder above it: :func:`discover_cases` walks the tree (hidden
folders skipped, at most :data:`MAX_DEPTH` levels, symbolic links followed once) and finds every case folder, i.e.
a folder holding files named like one of the layouts. Each *sub-tree* (the folder holding the case folders, or
the ``HGG``/``LGG`` folders) is reported with its layout, release and number of cases
(:attr:`DiscoveryResult.subtrees`); everything else it met is reported in :attr:`DiscoveryResult.problems` with the
reason it was ignored. Discovery refuses (:class:`DatasetConflictError`) only when the cases below the folder
cannot form one dataset: sub-trees of two BraTS editions (their patients overlap and their labels may differ), or
two different folders holding one case id. A folder reached twice (a symbolic link to a case folder already
found) is the same data, not a copy: it is reported and skipped.

Discovery only looks at file names: a missing sequence is ``None``; reading and checking the volumes is
:mod:`lckd_med.data.validation`'s job. Every folder is listed by one function, :func:`scan_folder`, which is
where unreadable folders and odd names are handled. Modality keys everywhere are
:data:`lckd_med.constants.MODALITIES` (``flair, t1, t1ce, t2``) in that order.
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
from lckd_med.data.naming import NIFTI_EXTENSIONS, is_nifti, nifti_stem
from lckd_med.utils.io import printable

__all__ = [
    "LAYOUTS",
    "LAYOUT_DEFAULT_RELEASE",
    "LAYOUT_PATTERNS",
    "GRADES",
    "NIFTI_EXTENSIONS",
    "Issue",
    "BratsCase",
    "MAX_DEPTH",
    "DiscoveryResult",
    "Subtree",
    "FolderScan",
    "LayoutError",
    "DatasetConflictError",
    "scan_folder",
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

# Per layout: separator between case id and suffix, and the naming scheme in RELEASE_FILE_SUFFIXES.
_SCHEME: dict[str, tuple[str, str]] = {
    "brats2018": ("_", "legacy"),
    "flat": ("_", "legacy"),
    "brats2023": ("-", "2023"),
}
# Files next to the cases that are metadata, not stray data (BraTS ships survival/mapping tables).
_METADATA_EXTENSIONS = (".csv", ".xlsx", ".xls", ".txt", ".md", ".json", ".pdf")
_RELEASE_IN_NAME = re.compile(r"^brats[-_]?(\d{2}|\d{4})(?!\d)", re.IGNORECASE)


#: Deepest folder level below the given folder that discovery looks into.
MAX_DEPTH: int = 8


class LayoutError(ValueError):
    """The folder holds no case in any known layout (or none in the layout that was asked for)."""


class DatasetConflictError(ValueError):
    """The cases below the folder cannot form one dataset: two BraTS editions, or two copies of one case."""


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
class Subtree:
    """One dataset found below the given folder: the folder holding its case folders (or ``HGG``/``LGG``).

    Attributes:
        root: that folder.
        layout: its layout id.
        release: BraTS release guessed from its case names (or the layout's default).
        case_ids: ids of the cases kept from it, sorted.
    """

    root: Path
    layout: str
    release: int
    case_ids: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.root}: {len(self.case_ids)} case(s), layout {self.layout}, BraTS {self.release}"


@dataclass(frozen=True)
class DiscoveryResult:
    """What :func:`discover_cases` found.

    Attributes:
        root: the folder given (absolute).
        layout: layout id of the cases (the most common one if sub-trees differ).
        release: BraTS release year (guessed from the case names or the layout, or given).
        convention: label convention of that release (ET = 4 up to 2022, 3 from 2023).
        cases: cases sorted by ``case_id``.
        problems: what was ignored and why: stray files and folders, unrecognised or ambiguous files, folders
            reached twice, unreadable folders.
        subtrees: the datasets the cases come from, sorted by folder.
    """

    root: Path
    layout: str
    release: int
    convention: LabelConvention
    cases: tuple[BratsCase, ...]
    problems: tuple[Issue, ...]
    subtrees: tuple[Subtree, ...] = ()


@dataclass(frozen=True)
class FolderScan:
    """The visible entries of one folder, as :func:`scan_folder` listed them.

    Attributes:
        path: the folder.
        files: regular files (symbolic links to files included), sorted by name.
        dirs: sub-folders that are not symbolic links, sorted by name.
        links: symbolic links to folders, sorted by name (walked after the real folders, so that a case reached
            both directly and through a link is kept at its real place).
        error: why the folder could not be listed (then ``files`` and ``dirs`` are empty), else None.
    """

    path: Path
    files: tuple[Path, ...] = ()
    dirs: tuple[Path, ...] = ()
    links: tuple[Path, ...] = ()
    error: str | None = None


def scan_folder(folder: Path) -> FolderScan:
    """List one folder: hidden entries (``.*``) skipped, files and sub-folders apart, sorted by name.

    The one place where a folder is read: an unreadable folder gives a scan with ``error`` set (reported by the
    caller as ignored) instead of raising.
    """
    files: list[Path] = []
    dirs: list[Path] = []
    links: list[Path] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir():
                        (links if e.is_symlink() else dirs).append(Path(e.path))
                    elif e.is_file():
                        files.append(Path(e.path))
                except OSError:  # a dangling link or an entry that vanished while listing
                    continue
    except OSError as err:
        return FolderScan(Path(folder), error=f"{type(err).__name__}: {err.strerror or err}")
    return FolderScan(
        Path(folder),
        tuple(sorted(files, key=lambda p: p.name)),
        tuple(sorted(dirs, key=lambda p: p.name)),
        tuple(sorted(links, key=lambda p: p.name)),
    )


def _stem(name: str) -> str:
    return nifti_stem(name) or name


def _suffix_map(layout: str) -> dict[str, str]:
    """File suffix -> key (modality key or ``"label"``) for a layout."""
    _, scheme = _SCHEME[layout]
    out = {suffix.lower(): key for key, suffix in RELEASE_FILE_SUFFIXES[scheme].items()}
    out[SEGMENTATION_SUFFIX] = "label"
    return out


def _parse_name(name: str, layout: str) -> tuple[str, str] | None:
    """``(prefix, key)`` of a recognised NIfTI file name in ``layout``, else ``None``."""
    if not is_nifti(name):
        return None
    sep, _ = _SCHEME[layout]
    stem = _stem(name)
    if sep not in stem:
        return None
    prefix, token = stem.rsplit(sep, 1)
    key = _suffix_map(layout).get(token.lower())
    return (prefix, key) if key is not None else None


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # a link loop: keep the path as given
        return path


def _case_layout(scan: FolderScan) -> str | None:
    """``"flat"`` or ``"brats2023"`` when the folder is a case folder of that naming scheme, else None.

    A case folder holds files named ``<prefix><sep><sequence>``: at least one whose prefix is the folder name (as
    BraTS ships them), or at least two sharing one prefix (a renamed folder). A lone ``mni_t1.nii.gz`` in a
    scratch folder is not a case.
    """
    best, best_n = None, 0
    for layout in ("flat", "brats2023"):
        prefixes = Counter(parsed[0] for f in scan.files if (parsed := _parse_name(f.name, layout)) is not None)
        n = sum(prefixes.values())
        is_case = prefixes.get(scan.path.name, 0) >= 1 or (n > 0 and prefixes.most_common(1)[0][1] >= 2)
        if is_case and n > best_n:
            best, best_n = layout, n
    return best


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset folder does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset path is not a folder: {path}")
    return path.resolve()


def _layout_help() -> str:
    return "; ".join(f"{name}: {pattern}" for name, pattern in LAYOUT_PATTERNS.items())


def _no_case_error(root: Path, layout: str | None) -> LayoutError:
    hint = ""
    if _case_layout(scan_folder(root)) is not None:
        hint = f" The folder itself looks like a single case: point at its parent ({root.parent})."
    which = (
        f"in layout {layout} ({LAYOUT_PATTERNS[layout]})"
        if layout
        else f"Expected one of the layouts: {_layout_help()}"
    )
    return LayoutError(f"no BraTS case found under {root} (searched {MAX_DEPTH} levels down). {which}.{hint}")


@dataclass
class _Found:
    """A case folder met during the walk, before duplicates and editions are checked."""

    case: BratsCase
    subtree: Path
    real: Path


class _Walker:
    """Walk below one folder and collect case folders; everything ignored becomes an :class:`Issue`."""

    def __init__(self, layout: str | None) -> None:
        self.layout = layout  # None: any layout
        self.found: list[_Found] = []
        self.problems: list[Issue] = []
        self.seen: dict[Path, Path] = {}  # real path of each folder entered -> the path it was first reached by
        self.deferred: list[tuple[Path, Path, int]] = []  # (link, folder holding it, its depth)

    def _first_visit(self, folder: Path) -> bool:
        real = _real(folder)
        if real in self.seen:
            self.problems.append(
                Issue(str(folder), f"ignored: same folder as {self.seen[real]} (reached twice, e.g. by a link)")
            )
            return False
        self.seen[real] = folder
        return True

    def _scan(self, folder: Path) -> FolderScan | None:
        scan = scan_folder(folder)
        if scan.error is not None:
            self.problems.append(Issue(str(folder), f"ignored: cannot read folder ({scan.error})"))
            return None
        return scan

    def _take_case(self, scan: FolderScan, layout: str, grade: str | None, subtree: Path) -> bool:
        """Keep ``scan`` as a case of ``layout`` when that layout is wanted; report it otherwise."""
        if self.layout is not None and self.layout != layout:
            self.problems.append(
                Issue(
                    str(scan.path),
                    f"ignored: folder has no file named as in layout {self.layout} ({LAYOUT_PATTERNS[self.layout]})",
                )
            )
            return False
        case = _collect_case(scan, layout, grade, self.problems)
        if case is None:
            return False
        self.found.append(_Found(case, subtree, _real(scan.path)))
        return True

    @staticmethod
    def _grade_folders(scan: FolderScan) -> list[tuple[str, FolderScan]]:
        """``(grade, scan)`` of the ``HGG``/``LGG`` sub-folders holding a brats2018-named case folder."""
        out = []
        for d in scan.dirs:
            if d.name.upper() in GRADES:
                gscan = scan_folder(d)
                if any(_case_layout(scan_folder(c)) == "flat" for c in (*gscan.dirs, *gscan.links)):
                    out.append((d.name.upper(), gscan))
        return out

    def visit(self, folder: Path, depth: int, scan: FolderScan | None = None) -> None:
        """Collect the cases at or below ``folder`` (``depth`` levels below the folder given)."""
        if not self._first_visit(folder):
            return
        scan = scan if scan is not None else self._scan(folder)
        if scan is None:
            return
        grades = self._grade_folders(scan)
        if grades:
            self._visit_brats2018(scan, grades)
            return
        self.deferred.extend((link, folder, depth) for link in scan.links)
        n_cases = sum(self.visit_child(d, folder, depth) for d in scan.dirs)
        nifti = [f for f in scan.files if is_nifti(f.name)]
        if n_cases:
            for f in scan.files:
                if not f.name.lower().endswith(_METADATA_EXTENSIONS):
                    self.problems.append(Issue(str(f), "ignored: stray file among case folders"))
            self._apply_name_mapping(folder)
        elif depth > 0 and not scan.dirs:
            # one note per non-case leaf folder: not worth a line per file
            listed = ", ".join(f.name for f in nifti[:3]) + (", ..." if len(nifti) > 3 else "")
            self.problems.append(
                Issue(
                    str(folder),
                    "ignored: not a BraTS case folder (no files named <case>_<sequence> or <case>-<sequence>)"
                    + (f" (NIfTI files found: {listed})" if nifti else ""),
                )
            )
        elif depth > 0:
            self.problems.extend(Issue(str(f), "ignored: NIfTI file outside any case folder") for f in nifti)

    def visit_child(self, d: Path, folder: Path, depth: int) -> int:
        """Visit sub-folder ``d`` of ``folder`` (at ``depth``); returns 1 when it was taken as a case, else 0."""
        if printable(d.name) != d.name:  # would break every report and log that names it
            self.problems.append(Issue(printable(str(d)), "ignored: folder name is not valid UTF-8; rename the folder"))
            return 0
        sub = self._scan(d)
        if sub is None:
            return 0
        layout = _case_layout(sub)
        if layout is not None:
            return int(self._first_visit(d) and self._take_case(sub, layout, None, folder))
        if depth + 1 > MAX_DEPTH:
            self.problems.append(Issue(str(d), f"ignored: more than {MAX_DEPTH} levels below the folder given"))
        else:
            self.visit(d, depth + 1, sub)
        return 0

    def run(self, root: Path) -> None:
        """Visit ``root``, then the links met on the way (targets already seen are reported, not taken twice)."""
        self.visit(root, 0)
        while self.deferred:
            link, folder, depth = self.deferred.pop(0)
            self.visit_child(link, folder, depth)

    def _apply_name_mapping(self, folder: Path) -> None:
        grades = _read_name_mapping(folder, self.problems)
        if not grades:
            return
        for i, x in enumerate(self.found):
            if x.subtree == folder and x.case.case_id in grades:
                c = x.case
                case = BratsCase(c.case_id, c.dir, grades[c.case_id], c.paths, c.label, c.layout)
                self.found[i] = _Found(case, x.subtree, x.real)

    def _visit_brats2018(self, scan: FolderScan, grades: list[tuple[str, FolderScan]]) -> None:
        grade_paths = {g.path for _, g in grades}
        for entry in (*scan.dirs, *scan.links, *scan.files):
            if entry in grade_paths or (entry in scan.files and entry.name.lower().endswith(_METADATA_EXTENSIONS)):
                continue
            self.problems.append(Issue(str(entry), "ignored: brats2018 layout expects only HGG/ and LGG/ folders here"))
        for grade, gscan in grades:
            if not self._first_visit(gscan.path):
                continue
            for d in (*gscan.dirs, *gscan.links):
                sub = self._scan(d)
                if sub is not None and self._first_visit(d):
                    self._take_case(sub, "brats2018", grade, scan.path)
            for f in gscan.files:
                if not f.name.lower().endswith(_METADATA_EXTENSIONS):
                    self.problems.append(Issue(str(f), "ignored: stray file among case folders"))


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


def _collect_case(scan: FolderScan, layout: str, grade: str | None, problems: list[Issue]) -> BratsCase | None:
    """A case from one folder, or ``None`` (reported once) when the folder has no recognised file."""
    folder = scan.path
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
    local: list[Issue] = [Issue(str(d), "ignored: unexpected sub-folder inside a case folder") for d in scan.dirs]
    unrecognised: list[str] = []
    for f in scan.files:
        parsed = _parse_name(f.name, layout)
        if parsed is None:
            if is_nifti(f.name):
                unrecognised.append(f.name)
                local.append(
                    Issue(
                        str(f),
                        f"ignored: NIfTI file name not recognised for layout {layout} ({LAYOUT_PATTERNS[layout]})",
                    )
                )
            elif not f.name.lower().endswith(_METADATA_EXTENSIONS):
                local.append(Issue(str(f), "ignored: not a NIfTI file"))
            continue
        prefix, key = parsed
        candidates.setdefault(key, []).append((prefix == case_id, f))
    if not candidates:
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
    for key, found_files in candidates.items():
        exact = [p for is_exact, p in found_files if is_exact] or [p for _, p in found_files]
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


def _walk(path: Path, layout: str | None) -> _Walker:
    walker = _Walker(layout)
    walker.run(path)
    return walker


def detect_layout(root: str | os.PathLike) -> str:
    """Layout id of the cases at or below a folder (the most common one when sub-trees differ).

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        LayoutError: no case folder in any known layout.
    """
    path = _check_root(root)
    found = _walk(path, None).found
    if not found:
        raise _no_case_error(path, None)
    return Counter(x.case.layout for x in found).most_common(1)[0][0]


def _check_duplicates(found: list[_Found], flag: str = "--dataset_dir") -> None:
    by_id: dict[str, list[_Found]] = {}
    for x in found:
        by_id.setdefault(x.case.case_id, []).append(x)
    copies = {cid: xs for cid, xs in by_id.items() if len(xs) > 1}
    if copies:
        lines = [f"{cid} in {', '.join(str(x.case.dir) for x in xs)}" for cid, xs in sorted(copies.items())]
        shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
        raise DatasetConflictError(
            f"{len(copies)} case id(s) found in two or more different folders: {shown}. "
            "Two copies of one case would leak between training and test splits (and overwrite each other's "
            f"outputs): remove the copies, or point {flag} at one of the datasets."
        )


def discover_cases(
    root: str | os.PathLike,
    layout: str | None = None,
    release: int | str | None = None,
    flag: str = "--dataset_dir",
    one_edition: bool = True,
) -> DiscoveryResult:
    """Find the BraTS cases at or below a folder (see the module docstring).

    Args:
        root: the dataset folder or any folder above it.
        layout: one of :data:`LAYOUTS` to keep only cases of that layout (others are reported as ignored), or
            ``None``/``"auto"`` for any.
        release: BraTS release year forcing the label convention (2023+ -> ET = 3, else 4); ``None`` guesses
            it from the case names, falling back to the layout's default.
        flag: how the user gave ``root`` (named in messages): ``--dataset_dir`` of data preparation, ``input_dir``
            of inference.
        one_edition: refuse sub-trees of two BraTS editions (data preparation: they share patients); inference,
            whose labels follow the checkpoint, segments them all (the release is then the most common one).

    Returns:
        A :class:`DiscoveryResult`; its ``cases`` may be empty when a forced layout matches nothing.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        LayoutError: auto-detection found no case.
        DatasetConflictError: sub-trees of two BraTS editions, or one case id in two different folders.
        ValueError: unknown ``layout`` or ``release``.
    """
    path = _check_root(root)
    if layout == "auto":
        layout = None
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    forced = parse_release(release) if release is not None else None
    walker = _walk(path, layout)
    if not walker.found:
        if layout is None:
            raise _no_case_error(path, None)
        year = forced if forced is not None else LAYOUT_DEFAULT_RELEASE[layout]
        return DiscoveryResult(path, layout, year, label_convention(year), (), tuple(walker.problems))
    _check_duplicates(walker.found, flag)

    groups: dict[tuple[Path, str], list[BratsCase]] = {}
    for x in walker.found:
        groups.setdefault((x.subtree, x.case.layout), []).append(x.case)
    subtrees = tuple(
        Subtree(root_, lay, guess_release([c.case_id for c in cs], lay), tuple(sorted(c.case_id for c in cs)))
        for (root_, lay), cs in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    )
    editions = sorted({st.release for st in subtrees})
    if not one_edition:
        editions = [Counter(st.release for st in subtrees for _ in st.case_ids).most_common(1)[0][0]]
    if len(editions) > 1:
        raise DatasetConflictError(
            f"{path} holds cases of {len(editions)} BraTS editions ({', '.join(map(str, editions))}): "
            + "; ".join(str(st) for st in subtrees)
            + ". Editions share patients under different names and may label ET differently: point "
            f"{flag} at one of these folders."
        )
    cases = sorted((x.case for x in walker.found), key=lambda c: (c.case_id, str(c.dir)))
    main_layout = Counter(c.layout for c in cases).most_common(1)[0][0]
    year = forced if forced is not None else editions[0]
    return DiscoveryResult(
        root=path,
        layout=main_layout,
        release=year,
        convention=label_convention(year),
        cases=tuple(cases),
        problems=tuple(walker.problems),
        subtrees=subtrees,
    )
