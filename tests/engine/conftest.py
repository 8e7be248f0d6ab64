"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one torch thread (and do not fight other jobs for cores);
    progress bars are off. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    from satsynth import progress

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    progress.set_mode("quiet")
    yield
    torch.set_num_threads(n)

@pytest.fixture
def cancel_after(monkeypatch):
    """``cancel_after(n)`` raises the cancel flag (the one SIGINT/SIGTERM and QGIS's cancel raise)
    once ``n`` progress updates have been made; ``monkeypatch.undo()`` lowers it again."""
    from satsynth import progress

    def arm(n: int) -> None:
        updates = {"n": 0}
        orig_update = progress.Task.update

        def counting_update(self, k=1, message=None, **extra):
            updates["n"] += 1
            return orig_update(self, k, message, **extra)

        monkeypatch.setattr(progress.Task, "update", counting_update)
        monkeypatch.setattr(progress, "cancel_requested", lambda: updates["n"] >= n)

    return arm


class SmallDisk:
    """A 2 MB tmpfs mounted at ``path``: :meth:`fill` leaves it nearly full."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self, leave: int) -> None:
        """Fill it up to ``leave`` free bytes (a file named ``filler``)."""
        st = os.statvfs(self.path)
        with open(self.path / "filler", "ab") as f:
            f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))

    def left(self) -> list[str]:
        """What is on it besides the filler."""
        return sorted(p.name for p in self.path.iterdir() if p.name != "filler")


@contextmanager
def tmpfs(mnt: Path, size: str, untested: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at the new folder ``mnt``, unmounted afterwards; where this
    process may not mount one (CI runs as root) the test is skipped with a message saying what
    is then ``untested``."""
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}): {untested}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MB tmpfs (a disk that fills up); skipped with a message where none can be mounted."""
    with tmpfs(tmp_path / "small-disk", "2m", "the full-disk cases are not tested") as mnt:
        yield SmallDisk(mnt)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A small synthetic chip store (64 train chips) that fits ``builders.make_store``'s real ones."""
    from builders import make_store

    return make_store(tmp_path_factory.mktemp("syn") / "syn", n_train=64, synthetic=True, seed=9)
