"""What a command may write or delete: never a file or folder it did not create.

Three mechanisms, used by every command that writes:

* a single output file (``lckd-med predict -o``, the safetensors exports, a datalist): :func:`check_output_file`
  refuses a path that is one of the command's inputs (always), a folder, a path under an existing file, and an
  existing file unless the caller's force flag (``--overwrite``) is given;
* an output folder holding several reports (evaluation, ``evaluate-folder``, training's election record):
  :class:`OwnedFiles` keeps an ownership record, :data:`OWNERSHIP_FILE`, listing each file lckd_med wrote there with
  the SHA-256 of what it wrote. A file is replaced (or a folder tree removed) only when the record lists it and its
  content is still what lckd_med wrote; anything else is the user's and needs the force flag;
* working folders (``.lckd_predict_*``, ``.lckd_align_*``, ...): :func:`make_work_dir` writes an owner marker (host
  and process id) inside, and :func:`remove_stale_work_dirs` removes only folders whose marker names this host and a
  process that no longer runs, so a folder of a run still going, of another machine, or of the user survives.

:func:`folder_lock` keeps two runs from writing one output folder at once (an advisory ``flock``; refused at once
rather than waited for).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from lckd_med.utils.io import write_text_atomic

__all__ = [
    "OWNERSHIP_FILE",
    "OWNER_MARKER",
    "LOCK_FILE",
    "file_sha256",
    "same_file",
    "check_output_file",
    "check_output_folder",
    "OwnedFiles",
    "make_work_dir",
    "remove_stale_work_dirs",
    "folder_lock",
    "OutputLockedError",
]

#: Ownership record of an output folder: ``{"format", "files": {relative path: sha256}}``.
OWNERSHIP_FILE = ".lckd_med_outputs.json"
_OWNERSHIP_FORMAT = "lckd_med.outputs/1"
#: Marker inside a working folder: ``{"host": ..., "pid": ...}`` of the process that made it.
OWNER_MARKER = ".lckd_owner.json"
#: Lock file of an output folder (see :func:`folder_lock`).
LOCK_FILE = ".lckd_med.lock"


class OutputLockedError(ValueError):
    """Another run holds the output folder's lock (:func:`folder_lock`)."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """``a`` and ``b`` name one file (the same path after resolving links, or the same inode: a hard link)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.resolve() == pb.resolve():
            return True
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def _file_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is not a folder (an ``-o`` under a file), if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """``folder`` when it is a folder or can be created as one.

    Raises:
        NotADirectoryError: ``folder`` is a file, or lies under a file.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file; pass a folder (it is created if missing)")
    blocker = _file_ancestor(folder)
    if blocker is not None:
        raise NotADirectoryError(f"cannot create {what} {folder}: {blocker} is a file, not a folder")
    return folder


def check_output_file(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    flag: str = "--overwrite",
    what: str = "output",
) -> Path:
    """``path`` when a command may write its one output file there.

    Args:
        path: the file to write.
        inputs: the command's input files; writing over one is refused even with ``overwrite``.
        overwrite: the user's force flag: an existing file (not an input) may be replaced.
        flag: how the user gives ``overwrite`` (named in the message).
        what: what the file is, for the messages (``"--output"``, ``"label map"``).

    Raises:
        ValueError: ``path`` is one of ``inputs``.
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: a parent of ``path`` is a file.
        FileExistsError: ``path`` exists and ``overwrite`` is False (the file is left untouched).
    """
    path = Path(path).expanduser()
    for given in inputs:
        if given is not None and same_file(path, given):
            raise ValueError(f"{what} {path} is also an input ({given}); choose another output path")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise NotADirectoryError(f"cannot write {what} {path}: {blocker} is a file, not a folder")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(
            f"{path} exists; it was left untouched: choose another {what} path or pass {flag} to replace it"
        )
    return path


class OwnedFiles:
    """The ownership record of one output folder (see the module docstring).

    Args:
        folder: the output folder (created on the first :meth:`record`).
        overwrite: the user's force flag: files lckd_med does not own may be replaced too.
        flag: how the user gives ``overwrite`` (named in the messages); None for commands without one.
    """

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False, flag: str | None = "--overwrite") -> None:
        self.folder = check_output_folder(folder)
        self.overwrite = bool(overwrite)
        self.flag = flag

    def _ways_out(self) -> str:
        if self.flag is None:
            return "move it away or choose another output folder"
        return f"move it away, choose another output folder or pass {self.flag} to replace it"

    @property
    def record_path(self) -> Path:
        return self.folder / OWNERSHIP_FILE

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("format") == _OWNERSHIP_FORMAT else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    def _rel(self, path: str | os.PathLike) -> str:
        p = Path(path)
        return (p.relative_to(self.folder) if p.is_absolute() else p).as_posix()

    def owns(self, path: str | os.PathLike) -> bool:
        """``path`` (relative to the folder, or under it) is listed and its content is what lckd_med wrote."""
        rel = self._rel(path)
        target = self.folder / rel
        digest = self._read().get(rel)
        try:
            return digest is not None and target.is_file() and not target.is_symlink() and file_sha256(target) == digest
        except OSError:
            return False

    def check(self, *paths: str | os.PathLike) -> None:
        """Raise before anything is written when one of ``paths`` exists and is not lckd_med's (see :meth:`owns`).

        Raises:
            FileExistsError: naming the first such file and the force flag (nothing is touched).
        """
        if self.overwrite:
            return
        for path in paths:
            target = self.folder / self._rel(path)
            if target.is_dir() and not target.is_symlink():
                raise FileExistsError(f"{target} is a folder where lckd_med writes a file; move it away")
            if (target.exists() or target.is_symlink()) and not self.owns(path):
                raise FileExistsError(
                    f"{target} exists and was not written by lckd_med (or was changed since); it was left untouched: "
                    f"{self._ways_out()}"
                )

    def record(self, *paths: str | os.PathLike) -> None:
        """List ``paths`` (files just written under the folder) as lckd_med's, with their content hashes."""
        files = self._read()
        for path in paths:
            files[self._rel(path)] = file_sha256(self.folder / self._rel(path))
        self._write(files)

    def forget(self, prefix: str) -> None:
        """Drop the entries under the relative folder ``prefix`` (after removing it)."""
        files = {k: v for k, v in self._read().items() if not k.startswith(prefix.rstrip("/") + "/")}
        self._write(files)

    def _write(self, files: dict[str, str]) -> None:
        payload = {"format": _OWNERSHIP_FORMAT, "files": dict(sorted(files.items()))}
        write_text_atomic(self.record_path, json.dumps(payload, indent=1) + "\n")

    def foreign_in_tree(self, reldir: str) -> list[Path]:
        """Files (and links, and other entries) under the relative folder ``reldir`` that lckd_med does not own."""
        root = self.folder / reldir
        if not root.exists():
            return []
        if root.is_symlink() or not root.is_dir():
            return [root]
        foreign = []
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]:
                p = Path(dirpath) / name
                if not self.owns(p.relative_to(self.folder)):
                    foreign.append(p)
        return foreign

    def remove_tree(self, reldir: str) -> None:
        """Remove the folder ``reldir`` only when every file in it is lckd_med's (or with the force flag).

        Raises:
            FileExistsError: naming a file of the user's inside (nothing is removed).
        """
        foreign = [] if self.overwrite else self.foreign_in_tree(reldir)
        if foreign:
            raise FileExistsError(
                f"{self.folder / reldir} holds {len(foreign)} file(s) lckd_med did not write (e.g. {foreign[0]}); it "
                f"was left untouched: {self._ways_out()}"
            )
        root = self.folder / reldir
        if root.is_symlink() or root.is_file():
            root.unlink()
        elif root.exists():
            shutil.rmtree(root)
        self.forget(reldir)


def make_work_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden working folder ``<parent>/<prefix><random>`` holding an owner marker (this host and process)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (work / OWNER_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
    return work


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def remove_stale_work_dirs(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove working folders of :func:`make_work_dir` left by killed runs: ``<parent>/<prefix>*`` folders (not links)
    whose owner marker names this host and a process that is no longer running. Anything else stays.

    Returns:
        The folders removed.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    host = socket.gethostname()
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            owner = json.loads((entry / OWNER_MARKER).read_text(encoding="utf-8"))
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no marker of ours: not provably ours
        if owner.get("host") == host and pid != os.getpid() and not _running(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (``<folder>/.lckd_med.lock``) for the ``with`` block.

    The lock goes with the process: a killed run leaves the file but not the lock. Where ``fcntl`` is missing
    (Windows) nothing is locked.

    Raises:
        OutputLockedError: another process holds the lock (the message says what to do).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                f"another lckd_med {what} is writing to {folder} right now; wait for it to finish or choose another "
                "output folder"
            ) from None
        yield
    finally:
        os.close(fd)
