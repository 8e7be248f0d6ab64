"""Errors a user sees: one clear sentence naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class SatSynthError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class Cancelled(Exception):
    """The run was interrupted (SIGINT/SIGTERM or a cancel request); nothing final was written."""


#: What the system errors a user can fix mean, and the way out.
_SYSTEM_ERRORS = {
    "ENOSPC": "no space left on the device: free some space or choose a folder on another disk",
    "EDQUOT": "disk quota exceeded: free some space or choose a folder on another disk",
    "EROFS": "the file system is read-only: choose a writable folder",
    "EACCES": "permission denied: check the permissions here, or choose another folder",
    "EPERM": "operation not permitted (an immutable or protected file or folder?): choose "
             "another folder",
    "ENAMETOOLONG": "a file name is too long for this file system: choose a shorter name",
}
#: How libraries that wrap the system's error (torch, safetensors, GDAL) word these.
_SYSTEM_TEXTS = {"No space left on device": "ENOSPC", "os error 28": "ENOSPC",
                 "file write failed": "ENOSPC", "Free disk space available": "ENOSPC",
                 "Disk quota exceeded": "EDQUOT", "Read-only file system": "EROFS",
                 "Permission denied": "EACCES", "Operation not permitted": "EPERM",
                 "File name too long": "ENAMETOOLONG"}


def system_error(exc: BaseException, outputs: list[str] | tuple[str, ...] = ()) -> str | None:
    """One line for a system error the user can fix (a full disk, a read-only or protected
    folder, a name too long), naming the folder: the error's own file's folder (above any
    temporary), else the first output's; None for any other error."""
    import errno

    code = exc.errno if isinstance(exc, OSError) else None
    name = errno.errorcode.get(code, "") if code is not None else ""
    if name not in _SYSTEM_ERRORS:
        text = str(exc)
        name = next((n for t, n in _SYSTEM_TEXTS.items() if t in text), "")
        if not name:  # a library's own words for a failed write (SQLite: "no such table")
            full = _full_disk(outputs)
            return None if full is None else f"{full}: {_SYSTEM_ERRORS['ENOSPC']}"
    filename = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    where = folder_above_temporaries(Path(str(filename))) if filename else (
        Path(outputs[0]).absolute().parent if outputs else None)
    why = _SYSTEM_ERRORS[name]
    return f"{where}: {why}" if where is not None else why


#: Below this many free bytes a disk counts as full (a failed write there is the disk's fault).
FULL_DISK_BYTES = 1 << 20


def _full_disk(paths: list[str] | tuple[str, ...]) -> Path | None:
    """The first folder among ``paths`` (or their nearest existing parents) on a full disk."""
    import os

    for p in paths:
        here = Path(p).absolute()
        while not here.exists() and here != here.parent:
            here = here.parent
        try:
            st = os.statvfs(here)
        except (OSError, AttributeError):
            continue
        if st.f_bavail * st.f_frsize < FULL_DISK_BYTES:
            return folder_above_temporaries(here / "x" if here.is_dir() else here)
    return None


def folder_above_temporaries(path: Path) -> Path:
    """The folder of ``path``, above the temporaries SatSynth writes into (``.X.partial``...)."""
    parts = path.absolute().parts
    for i, part in enumerate(parts):
        if part.startswith(".") and any(t in part for t in (".partial", ".work", ".old-")):
            return Path(*parts[:i])
    return path.absolute().parent
