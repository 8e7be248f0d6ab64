"""Output safety: what a stage may write, checked before any work starts.

The rule, for every stage (and the plugin's pre-checks, through ``satsynth check-output``):

- an output may replace only an earlier SatSynth output *of the same kind*, recognised by its own
  marker (a dataset's ``dataset.json``, a synthetic store's ``"synthetic": true``, a model
  folder's ``config.json`` ``kind``, an evaluation's ``report.json``...);
- never an input of the same run, never a folder that contains an input or lies inside one;
- never a non-empty folder that is not a SatSynth output of that kind (no option overrides this);
- a single-file output (a prediction raster, a GeoPackage, an ONNX model, a ``.qml`` style)
  replaces only a file that carries SatSynth's mark (:func:`is_satsynth_file`), never a file
  another program made, an input or a folder;
- inputs are their whole file set (:func:`input_files`): the data files a VRT references, the
  sidecars beside them (``.aux.xml``, ``.ovr``, ``.qml``, world files, ``.prj``), a shapefile's
  parts, a GeoPackage's ``-wal``/``-shm``: no output, nor a sidecar an output writes beside
  itself, may be one of them;
- names the file system cannot hold (too long, control characters such as a newline) are
  refused before any work;
- the place must be writable (checked by creating and removing a probe file), so a read-only
  folder fails in a second, not after an hour of training.

:func:`check_output` also removes the temporaries that killed runs left for that output (names
carry the writer's PID: ``.NAME.PID-xxxx.partial``, ``.NAME.old-PID``, ``.STEM.PID-xxxx.work``),
only when that process is gone and the temporary is demonstrably SatSynth's (it holds the
marker file :data:`satsynth.io.TEMP_MARKER`; an ``.old-PID`` folder is a SatSynth output).
:func:`output_lock` keeps two runs from writing one output.
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

from satsynth.contract import (
    FILE_KIND,
    FOLDER_KINDS,
    OUTPUT_MARK,
    is_kind,
    output_kind,
    style_path,
)
from satsynth.errors import SatSynthError
from satsynth.io import TEMP_MARKER

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


#: Sidecars named by adding to a data file's whole name (``scene.tif.aux.xml``, ``db.gpkg-wal``).
_ADDED_SIDECARS = (".aux.xml", ".ovr", ".msk", ".xml", ".aux", "-wal", "-shm", "-journal")
#: Sidecars named by replacing its suffix: styles, projections, world files, shapefile parts.
_STEM_SIDECARS = (".qml", ".qmd", ".sld", ".prj", ".aux", ".wld", ".tfw", ".tifw", ".tiffw",
                  ".jgw", ".jpgw", ".pgw", ".pngw", ".j2w", ".gfw", ".bpw", ".shp", ".shx",
                  ".dbf", ".cpg", ".sbn", ".sbx", ".qix", ".fix", ".shp.xml")


def _sidecars(path: Path) -> list[Path]:
    """The names a file's sidecars may have (whether they exist or not)."""
    names = [path.with_name(path.name + s) for s in _ADDED_SIDECARS]
    if path.suffix:
        stem = path.with_suffix("")
        for s in _STEM_SIDECARS:
            names += [stem.with_name(stem.name + s), stem.with_name(stem.name + s.upper())]
    return names


def _data_files(path: Path) -> list[Path]:
    """The files GDAL reads for a raster (a VRT's sources, overviews...); [] when it is not one
    GDAL opens as a raster."""
    if path.suffix.lower() in (".gpkg", ".shp", ".json", ".geojson", ".safetensors", ".onnx",
                               ".txt", ".csv"):
        return []
    try:
        import rasterio

        with rasterio.Env(CPL_LOG="/dev/null"), rasterio.open(path) as ds:
            return [Path(f) for f in ds.files if f]
    except Exception:  # noqa: BLE001 - not a raster GDAL opens: no data files of its own
        return []


def input_files(path: PathLike, depth: int = 3) -> set[Path]:
    """An input's whole file set: the file, the data files GDAL reads for it (recursively, for a
    VRT of VRTs) and the sidecars of each that exist. A folder is itself alone (the containment
    rules cover what is inside it)."""
    p = _resolved(path)
    found = {p}
    if not p.is_file():
        return found
    found.update(q for q in _sidecars(p) if q.is_file())
    for f in _data_files(p):
        q = _resolved(f)
        if q == p or q in found:
            continue
        if q.suffix.lower() == ".vrt" and depth > 0:  # a VRT of VRTs
            found |= input_files(q, depth - 1)
        elif q.is_file():  # a source (each opened once by GDAL above, not again here)
            found.add(q)
            found.update(r for r in _sidecars(q) if r.is_file())
    return found


def own_files(out: Path) -> list[Path]:
    """The files a single-file output writes beside itself: GDAL's ``.aux.xml``, the ``.qml``
    style predict writes beside a raster or polygons, a GeoPackage's journal files."""
    return [out.with_name(out.name + s) for s in (".aux.xml", "-wal", "-shm", "-journal")] + (
        [style_path(out)] if out.suffix.lower() in (".tif", ".tiff", ".gpkg") else [])


def _check_inputs(out: Path, given: PathLike, inputs: Iterable[PathLike | None],
                  is_file: bool = False) -> None:
    mine = own_files(out) if is_file else []
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
        for f in sorted(input_files(inp) - {inp}):
            if _same(out, f):
                raise SatSynthError(f"{f.name} is a file of the input {item}; inputs are never "
                                    "replaced: choose another output path", given)
            if not is_file and f.is_relative_to(out):
                raise SatSynthError(f"the output folder contains {f.name}, a file of the input "
                                    f"{item}; it would be replaced: choose another output path",
                                    given)
            side = next((m for m in mine if _same(m, f)), None)
            if side is not None:
                raise SatSynthError(f"the output would write {side.name} beside itself, which "
                                    f"is a file of the input {item}: choose another output "
                                    "name", given)


def is_satsynth_file(path: PathLike) -> bool:
    """Whether the file at ``path`` carries SatSynth's output mark (see
    :data:`satsynth.contract.OUTPUT_MARK`): a GeoTIFF tag, a GeoPackage's dataset metadata, a
    comment in a ``.qml`` style, ``satsynth_*`` metadata in an ONNX model."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import rasterio

            with rasterio.Env(CPL_LOG="/dev/null"), rasterio.open(p) as ds:
                return OUTPUT_MARK in ds.tags()
        if suffix == ".gpkg":
            import sqlite3

            uri = Path(os.path.abspath(p)).as_uri() + "?mode=ro&immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                rows = db.execute("SELECT metadata FROM gpkg_metadata").fetchall()
            return any(OUTPUT_MARK in str(r[0]) for r in rows)
        if suffix == ".onnx":
            import onnx

            model = onnx.load(str(p), load_external_data=False)
            return any(m.key.startswith("satsynth_") for m in model.metadata_props)
        if suffix == ".qml":
            with p.open("rb") as f:
                return OUTPUT_MARK.encode() in f.read(4096)
    except Exception:  # noqa: BLE001 - unreadable or another format: not SatSynth's
        return False
    return False


def _check_name(path: Path, given: PathLike) -> None:
    """Refuse new names with control characters (a newline, a tab) and names the file system
    cannot hold (with room for the temporary's name, ``.NAME.PID-xxxxxxxx.partial``)."""
    here = path.parent
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    try:
        limit = os.pathconf(here, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.relative_to(here).parts:
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            raise SatSynthError("the path contains a control character (a newline or a tab): "
                                "choose a plain name", repr(os.fspath(given)))
        n = len(os.fsencode(part))
        if n + _TEMP_EXTRA > limit:
            raise SatSynthError(f"the name {part[:40]}... is too long for this file system ({n} "
                                f"bytes; at most {limit - _TEMP_EXTRA} here): choose a shorter "
                                "name", here)


#: What a temporary's name adds to an output's: ``.`` + ``.PID-xxxxxxxx.partial``.
_TEMP_EXTRA = 32


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

    Temporaries of live processes are never touched. In a distributed run (torchrun / accelerate
    launch) only the main process cleans: a process on another node cannot tell whether the main
    process's PID is alive.

    Args:
        out (`str` or `Path`):
            The output whose temporaries (hidden siblings named by :func:`satsynth.io.temp_name`)
            are looked for.
        inside (`bool`, *optional*, defaults to `False`):
            Also remove those directly inside the folder ``out`` (stages that write into an
            existing folder).

    Returns:
        `list[Path]`: the temporaries removed.
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
            if not _made_by_satsynth(p, old=m.re is _OLD_RE):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p)
                removed.append(p)
    return removed


def _made_by_satsynth(p: Path, old: bool) -> bool:
    """Whether the leftover ``p`` is demonstrably SatSynth's: a temporary folder holding the
    marker its creator wrote, or (``.NAME.old-PID``) an earlier output moved aside, which is a
    SatSynth output of some kind. A file, or a folder without either, is never removed."""
    if p.is_symlink() or not p.is_dir():
        return False
    if (p / TEMP_MARKER).is_file():
        return True
    return old and output_kind(p) is not None


def check_output(out: str | Path, kind: str, inputs: Iterable[PathLike | None] = (),
                 *, into: bool = False, clean: bool = True) -> Path:
    """Refuse an output path that would destroy data or cannot be written.

    Args:
        out (`str` or `Path`):
            The output path the stage will write.
        kind (`str`):
            The output's kind: ``file`` for a single file, else a folder kind (``dataset``,
            ``synthetic``, ``evaluation``, ``experiment``, ``demo``, or a model kind such as
            ``generator``/``segmenter`` found in ``config.json``). An existing folder is replaced
            only when it is an earlier output of this kind.
        inputs (`Iterable` of paths, *optional*):
            The run's input paths (files or folders; `None` and ``''`` are skipped): the output may
            not be, contain or lie inside any of them (a VRT's sources and sidecars included).
        into (`bool`, *optional*, defaults to `False`):
            For stages that write into an existing folder of their kind instead of replacing it
            (evaluation, experiment, demo).
        clean (`bool`, *optional*, defaults to `True`):
            Also remove the temporaries of dead processes for ``out`` (:func:`clean_stale`); off for
            a plain ``satsynth check-output``.

    Returns:
        `Path`: ``Path(out)``.

    Raises:
        `SatSynthError`: one line naming ``out``, the problem and the way out.
    """
    if kind != FILE_KIND and kind not in FOLDER_KINDS:
        raise SatSynthError(f"unknown output kind {kind!r}: choose from "
                            f"{', '.join((FILE_KIND, *FOLDER_KINDS))}")
    given = out
    _check_name(Path(os.path.abspath(os.path.expanduser(os.fspath(out)))), given)
    path = _resolved(out)
    is_file = kind == FILE_KIND
    _check_inputs(path, given, inputs, is_file)
    if path.exists():
        if is_file and path.is_dir():
            raise SatSynthError("is a folder; a file name is needed here", given)
        if is_file and not is_satsynth_file(path):
            raise SatSynthError("exists and was not written by SatSynth; SatSynth replaces only "
                                "its own earlier outputs: choose another name, or delete the "
                                "file first", given)
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
    if clean:
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
    Re-entrant within a process (the demo and the experiment call stages in-process).

    Args:
        *outs (`str`, `Path` or `None`):
            The outputs to lock; `None` and ``''`` entries are skipped.

    Returns:
        `Iterator[None]`: a context manager holding the locks for its block.

    Raises:
        `SatSynthError`: another process writes one of the outputs.
    """
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
