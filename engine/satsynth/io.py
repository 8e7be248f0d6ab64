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


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / temp_name(path, is_file=not is_dir)
        if not is_dir:
            if not tmp.exists():
                return tmp
            continue
        try:
            tmp.mkdir()  # the umask applies (tempfile.mkdtemp would make it 0700)
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` on success."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
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


def umask_mode(path: str | Path, mode: int = 0o666) -> None:
    """Give a file written by a library that ignores the umask (safetensors writes 0600) the
    permissions of a normal new file: ``mode`` less the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, mode & ~mask)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a clear error when it is missing or malformed."""
    from satsynth.errors import SatSynthError

    path = Path(path)
    if not path.is_file():
        raise SatSynthError("file not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SatSynthError(f"not valid JSON ({exc})", path) from None
