"""Output safety: what a stage may write, checked before any work starts.

The rule, for every stage (and the plugin's pre-checks, through ``satsynth check-output``):

- an output may replace only an earlier SatSynth output *of the same kind*, recognised by its own
  marker (a dataset's ``dataset.json``, a synthetic store's ``"synthetic": true``, a model
  folder's ``config.json`` ``kind``, an evaluation's ``report.json``...);
- never an input of the same run, never a folder that contains an input or lies inside one;
- never a non-empty folder that is not a SatSynth output of that kind (no option overrides this);
- a single-file output (a prediction raster, a GeoPackage) never replaces an input or a folder;
- the place must be writable (checked by creating and removing a probe file), so a read-only
  folder fails in a second, not after an hour of training.

:func:`check_output` also removes the temporaries that killed runs left for that output (names
carry the writer's PID: ``.NAME.PID-xxxx.partial``, ``.NAME.old-PID``, ``.STEM.PID-xxxx.work``),
only when that process is gone. :func:`output_lock` keeps two runs from writing one output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from satsynth.contract import FILE_KIND, FOLDER_KINDS, is_kind, output_kind
from satsynth.errors import SatSynthError

PathLike = str | os.PathLike

_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)-[0-9a-z_]+\.(?:partial|work)(?:\..*)?$")
_OLD_RE = re.compile(r"^\.(?P<base>.+)\.old-(?P<pid>\d+)$")


def _describe(kind: str) -> str:
    return FOLDER_KINDS[kind].engine_text if kind in FOLDER_KINDS else f"a {kind} model folder"


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_inputs(out: Path, given: PathLike, inputs: Iterable[PathLike | None]) -> None:
    for item in inputs:
        if item is None or os.fspath(item) == "":
            continue
        inp = _resolved(item)
        if _same(out, inp):
            raise SatSynthError(f"this output is also an input of this run ({item}); inputs "
                                "are never replaced: choose another output path", given)
        if inp.is_relative_to(out):
            raise SatSynthError(f"the output folder contains the input {item}; it would be "
                                "replaced: choose another output path", given)
        if out.is_relative_to(inp) and inp.is_dir():
            raise SatSynthError(f"the output lies inside the input folder {item}; inputs are "
                                "never modified: choose a path outside it", given)


def _probe_writable(folder: Path, given: PathLike) -> None:
    """Create and remove a file in the nearest existing ancestor of ``folder``."""
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise SatSynthError(f"{here} is a file, not a folder: the output cannot be created",
                            given)
    probe = here / f".satsynth-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise SatSynthError(f"cannot write in {here} ({reason}): choose a writable location",
                            given) from None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _matches(base: str, out: Path) -> bool:
    stem = out.stem
    return base in (out.name, stem) or base.startswith(out.name + ".") or (
        out.suffix != "" and base.startswith(stem + "."))


def clean_stale(out: str | Path, inside: bool = False) -> list[Path]:
    """Remove temporaries of ``out`` left by processes that no longer run (kill -9, power cut).

    With ``inside=True`` also those directly inside the folder ``out`` (stages that write into
    an existing folder). Temporaries of live processes are never touched. Returns what went.
    In a distributed run (torchrun / accelerate launch) only the main process cleans: a process
    on another node cannot tell whether the main process's PID is alive.
    """
    from satsynth.distributed import launch_rank

    if launch_rank() != 0:
        return []
    out = Path(out)
    places = [(out.parent, lambda base: _matches(base, out))]
    if inside and out.is_dir():
        places.append((out, lambda base: True))
    removed = []
    for folder, wanted in places:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = _TEMP_RE.match(e.name) or _OLD_RE.match(e.name)
            if not m or not wanted(m["base"]) or pid_alive(int(m["pid"])):
                continue
            p = Path(e.path)
            try:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                continue
    return removed


def check_output(out: str | Path, kind: str, inputs: Iterable[PathLike | None] = (),
                 *, into: bool = False) -> Path:
    """Refuse an output path that would destroy data or cannot be written; returns ``Path(out)``.

    ``kind`` is the output's kind: ``file`` for a single file, else a folder kind (``dataset``,
    ``synthetic``, ``evaluation``, ``experiment``, ``demo``, or a model kind such as
    ``generator``/``segmenter`` found in ``config.json``). ``inputs`` are the run's input paths
    (files or folders; None and '' are skipped). ``into=True`` for stages that write into an
    existing folder of their kind instead of replacing it (evaluation, experiment, demo).
    Also cleans the temporaries of dead processes for ``out`` (:func:`clean_stale`).
    Raises :class:`SatSynthError` with one line naming ``out``, the problem and the way out.
    """
    given = out
    path = _resolved(out)
    is_file = kind == FILE_KIND
    _check_inputs(path, given, inputs)
    if path.exists():
        if is_file and path.is_dir():
            raise SatSynthError("is a folder; a file name is needed here", given)
        if not is_file:
            if not path.is_dir():
                raise SatSynthError(f"is a file; {_describe(kind)} is written here, so a "
                                    "folder path is needed", given)
            found = output_kind(path)
            if not is_kind(path, kind) and any(path.iterdir()):
                if found is not None:
                    raise SatSynthError(
                        f"is {_describe(found)}, not {_describe(kind)}; SatSynth replaces only an "
                        "earlier output of the same kind: choose another output folder", given)
                raise SatSynthError(
                    f"is a non-empty folder, not a SatSynth {kind} folder; SatSynth replaces "
                    "only its own earlier outputs of the same kind: choose a new or empty "
                    "folder", given)
    _probe_writable(path.parent, given)
    if not is_file and into and path.is_dir():
        _probe_writable(path, given)
    clean_stale(path, inside=not is_file and into)
    return Path(out)


# --------------------------------------------------------------------------------------------
# one writer per output


_held: dict[str, object] = {}


def lock_keys(out: PathLike) -> list[str]:
    """What a lock on the output ``out`` is keyed on: its place by identity (the device and inode
    of its nearest existing parent folder, symbolic links resolved, plus the rest of the path)
    and, when it exists, its own device and inode. The same folder reached through a symbolic
    link, a bind mount or another spelling of the path gets the same keys."""
    path = _resolved(out)
    here, rest = path.parent, [path.name]
    while not here.exists() and here != here.parent:
        here, rest = here.parent, [here.name, *rest]
    try:
        st = os.stat(here)
    except OSError:  # not even the parent can be looked at: the path is all there is
        return [str(path)]
    keys = [f"{st.st_dev}:{st.st_ino}/" + "/".join(rest)]
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.append(f"{st.st_dev}:{st.st_ino}")
    return keys


def _lock_key(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:32]


def _acquire(identity: str) -> object | None:
    """A handle that holds the lock ``identity`` until closed (None: another process holds
    it)."""
    key = _lock_key(identity)
    if sys.platform.startswith("linux"):
        # an abstract-namespace socket: no file anywhere, released by the kernel when the
        # process ends, however it ends
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0satsynth-output-{key}")
        except OSError:
            sock.close()
            return None
        return sock
    import tempfile

    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return contextlib.nullcontext()
    f = open(Path(tempfile.gettempdir()) / f"satsynth-output-{key}.lock", "a")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


@contextlib.contextmanager
def output_lock(*outs: str | Path | None) -> Iterator[None]:
    """Hold a lock on each output for the block; another process asking for one is refused.
    Locks go by the output's identity (:func:`lock_keys`), not by how its path is spelled.

    Re-entrant within a process (the demo and the experiment call stages in-process)."""
    taken: list[str] = []
    try:
        for out in outs:
            if out is None or os.fspath(out) == "":
                continue
            for key in lock_keys(out):
                if key in _held:
                    continue
                handle = _acquire(key)
                if handle is None:
                    raise SatSynthError("another SatSynth run is writing this output right now: "
                                        "wait for it to finish or choose another output path",
                                        out)
                _held[key] = handle
                taken.append(key)
        yield
    finally:
        for key in taken:
            handle = _held.pop(key)
            close = getattr(handle, "close", None)
            if close is not None:
                close()
