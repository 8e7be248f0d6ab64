"""Atomic writes: every output appears at its final path complete, or not at all."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_name(path: Path, tag: str = "partial", is_file: bool = False) -> str:
    """A hidden sibling name for a temporary of ``path`` that carries this process's PID:
    ``.NAME.PID-xxxxxxxx.TAG`` (folders), ``.STEM.PID-xxxxxxxx.TAG.SUFFIX`` (files), so a later
    run can remove a dead writer's leftovers (:func:`satsynth.outputs.clean_stale`)."""
    mark = f"{os.getpid()}-{secrets.token_hex(4)}.{tag}"
    return f".{path.stem}.{mark}{path.suffix}" if is_file else f".{path.name}.{mark}"


#: The file SatSynth writes inside each of its temporary folders: the stale-temporary cleanup
#: (:func:`satsynth.outputs.clean_stale`) removes only folders that hold it.
TEMP_MARKER = ".satsynth-temporary"


def make_temp_dir(path: Path, tag: str = "partial", is_file: bool = False) -> Path:
    """Create a marked temporary folder beside ``path`` (named by :func:`temp_name`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / temp_name(path, tag, is_file=is_file)
        try:
            tmp.mkdir()  # the umask applies (tempfile.mkdtemp would make it 0700)
        except FileExistsError:
            continue
        break
    try:
        (tmp / TEMP_MARKER).write_text(f"{os.getpid()}\n", encoding="utf-8")
    except OSError as exc:  # a full disk: say where
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, exc.strerror, str(tmp / TEMP_MARKER)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextmanager
def temp_dir(beside: str | Path, tag: str = "work") -> Iterator[Path]:
    """A marked scratch folder beside ``beside`` for the block, removed afterwards.

    Args:
        beside (`str` or `Path`):
            The output the scratch folder belongs to; the folder is created in its parent folder,
            named by :func:`temp_name` (hidden, with this process's PID).
        tag (`str`, *optional*, defaults to `"work"`):
            The tag in the folder's name.

    Returns:
        `Iterator[Path]`: the scratch folder (a context manager's value), removed with everything in
        it when the block ends, also on an error.
    """
    tmp = make_temp_dir(Path(beside), tag, is_file=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write a file atomically: the caller writes a temporary, renamed onto ``path`` on success.

    The temporary is ``path``'s name inside a marked temporary folder beside it, so a library's own
    sidecars (GDAL's ``.aux.xml``, ``.ovr``) go with it and are removed with it.

    Args:
        path (`str` or `Path`):
            The final path; nothing appears there unless the block ends without an error.

    Returns:
        `Iterator[Path]`: the temporary file path to write (a context manager's value).
    """
    path = Path(path)
    folder = make_temp_dir(path, is_file=True)
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Write a folder atomically: the caller fills a temporary folder that replaces ``path``.

    A symbolic link named as ``path`` stays a link: the folder it points to is the one replaced.

    Args:
        path (`str` or `Path`):
            The final folder.
        overwrite (`bool`, *optional*, defaults to `True`):
            Replace an existing ``path``; with `False` an existing one raises `FileExistsError`.

    Returns:
        `Iterator[Path]`: the temporary folder to fill (a context manager's value); it is removed
        if the block raises.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    tmp = make_temp_dir(path)
    try:
        yield tmp
        (tmp / TEMP_MARKER).unlink(missing_ok=True)
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def reserve_file(path: str | Path, what: str = "this output") -> None:
    """Allocate every block of the file at ``path`` (its current size) now.

    Writing it through a memory map then never meets a full disk, which would kill the process with
    SIGBUS: a full disk is one clear error here, before any work. File systems without
    ``fallocate`` get the file written with zeros instead.

    Args:
        path (`str` or `Path`):
            An existing file of its final size (e.g. a ``numpy.lib.format.open_memmap`` array).
        what (`str`, *optional*, defaults to `"this output"`):
            What the file is, for the error message.

    Raises:
        `SatSynthError`: the disk has no room for it (naming the folder and the size).
    """
    import errno

    from satsynth.errors import SatSynthError, folder_above_temporaries

    path = Path(path)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            if not hasattr(os, "posix_fallocate"):
                raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            _write_zeros(fd, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise SatSynthError(f"not enough free space for {what} ({_size(size)} more): free "
                            "some space or choose a folder on another disk",
                            folder_above_temporaries(path)) from None
    finally:
        os.close(fd)


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else \
        f"{n / 1e3:.0f} kB"


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Refuse, before the work, to write more than the free space of a file system.

    Args:
        folder (`str` or `Path`):
            An existing folder on the file system to be written.
        need (`int`):
            The bytes the work will write there.
        what (`str`):
            What they are, for the message (e.g. `"the chips"`).

    Raises:
        `SatSynthError`: ``need`` is more than the free space (one line naming the folder and both
        sizes). File systems that cannot say their free space are not checked.
    """
    from satsynth.errors import SatSynthError, folder_above_temporaries

    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise SatSynthError(f"{what} need {_size(need)} but only {_size(free)} are free: free "
                            "some space or choose a folder on another disk",
                            folder_above_temporaries(Path(folder) / "x"))


def _write_zeros(fd: int, size: int, chunk: int = 1 << 20) -> None:
    zeros = bytes(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    done = 0
    while done < size:
        done += os.write(fd, zeros[: min(chunk, size - done)])


def umask_mode(path: str | Path, mode: int = 0o666) -> None:
    """Give a file the permissions of a normal new file: ``mode`` less the user's umask.

    For files written by a library that ignores the umask (safetensors writes 0600).

    Args:
        path (`str` or `Path`):
            The file.
        mode (`int`, *optional*, defaults to `0o666`):
            The permissions before the umask.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, mode & ~mask)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, a final newline), atomically.

    Args:
        path (`str` or `Path`):
            The file to write.
        obj (`Any`):
            Anything `json.dumps` takes; other objects are written as their `str`.

    Returns:
        `Path`: ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a clear error when it is missing or malformed.

    Args:
        path (`str` or `Path`):
            The file to read (UTF-8).

    Returns:
        `Any`: the decoded JSON value.

    Raises:
        `SatSynthError`: the file is missing, or is not valid UTF-8 JSON (naming the file).
    """
    from satsynth.errors import SatSynthError

    path = Path(path)
    if not path.is_file():
        raise SatSynthError("file not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SatSynthError(f"not valid JSON ({exc})", path) from None
