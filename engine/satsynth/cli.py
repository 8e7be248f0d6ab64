"""The ``satsynth`` command line: one sub-command per stage.

Every stage module exposes ``register(subparsers, common)``, adding its sub-commands with
``set_defaults(func=...)``; a command function takes the parsed arguments and returns a dict of
outputs (name -> path or value), reported in the final ``done`` event.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from satsynth import __version__, progress
from satsynth.cli_common import add_command
from satsynth.contract import (
    CLI_CANCELLED,
    CLI_ERROR,
    CLI_INTERNAL_ERROR,
    EXIT_CANCELLED,
    EXIT_REFUSED,
    FILE_KIND,
    FOLDER_KINDS,
    PROGRESS_MODES,
)
from satsynth.data import cli as data_cli
from satsynth.distributed import launch_rank
from satsynth.errors import Cancelled, SatSynthError, system_error
from satsynth.generator import cli as generator_cli
from satsynth.outputs import check_output, output_lock
from satsynth.predict import cli as predict_cli
from satsynth.raster import quiet_libtiff
from satsynth.segmenter import cli as segmenter_cli
from satsynth.threads import apply_threads, set_wait_policy
from satsynth.workflows import cli as workflows_cli

log = logging.getLogger("satsynth")

#: Modules that register sub-commands, in the order of the pipeline.
COMMAND_MODULES = (data_cli, generator_cli, segmenter_cli, predict_cli, workflows_cli)


#: Options naming an output (a single path; prepare's repeatable --vector inputs are lists, not
#: locked): each is locked while a command runs, so two runs never write one output. A command
#: that updates an input folder in place names its option in ``set_defaults(writes_into=...)``.
OUTPUT_ARGS = ("out", "confidence", "vector")


def _check_output(args: argparse.Namespace) -> dict[str, Any]:
    """Exit 0 when a stage may write PATH as an output of KIND with these inputs, else one line
    saying why (exit 2)."""
    check_output(args.path, args.kind, inputs=args.input, into=args.into, clean=False)
    return {"ok": True}


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Report the engine's version, torch, the device it would use and its GPU."""
    from satsynth.device import describe

    return describe()


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all stages)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--progress", choices=PROGRESS_MODES,
                        default=argparse.SUPPRESS,
                        help="progress display: a terminal bar (default on a terminal), JSON lines "
                             "on stdout (for the QGIS plugin), or nothing")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging on stderr")
    common.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="CPU threads to compute with (default: the usable CPUs that the "
                             "machine's load leaves free, at least 1)")
    parser = argparse.ArgumentParser(
        prog="satsynth", parents=[common],
        description="SatSynth: learn joint image-mask diffusion from labeled rasters, synthesize "
                    "training pairs, train and apply segmenters.")
    parser.add_argument("--version", action="version", version=f"satsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub, common)
    add_command(sub, common, "check", _check,
                help="report the engine's version, torch, device and GPU")
    p = add_command(sub, common, "check-output", _check_output,
                    help="check that a stage may write PATH (used by the QGIS plugin)")
    p.add_argument("path", help="the output path")
    p.add_argument("--kind", required=True,
                   help=", ".join((FILE_KIND, *FOLDER_KINDS)))
    p.add_argument("--input", action="append", default=[], help="an input of the run (repeat)")
    p.add_argument("--into", action="store_true",
                   help="the stage writes into an existing folder of its kind")
    return parser


def _report_outputs(outputs: dict[str, Any]) -> None:
    if progress.mode() == "json":
        progress.emit_done(outputs)
        return
    for key, value in outputs.items():
        if isinstance(value, (dict, list)):
            import json

            value = json.dumps(value)
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = getattr(args, "progress", None) or ("bar" if sys.stderr.isatty() else "quiet")
    progress.set_mode(mode)
    progress.setup_logging(getattr(args, "verbose", False))
    if not getattr(args, "verbose", False):
        quiet_libtiff()
    progress.install_signal_handlers()
    if args.command != "check-output":  # before torch is imported: OpenMP reads it once
        set_wait_policy(apply_threads(getattr(args, "threads", None)))
    # one writer per output: under accelerate launch / torchrun the run's main process
    locked = (*OUTPUT_ARGS, *getattr(args, "writes_into", ())) if launch_rank() == 0 else ()
    outs = [v for v in (getattr(args, k, None) for k in locked) if isinstance(v, str)]
    try:
        with output_lock(*outs), _remove_new_folders_on_failure(outs):
            outputs = args.func(args) or {}
    except SatSynthError as exc:
        progress.emit_error(str(exc))
        print(f"{CLI_ERROR}{exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:  # the reader went away (``satsynth info DS | head``): not an error
        _silence_stdout()
        return 0
    except (Cancelled, KeyboardInterrupt):
        progress.emit_error("cancelled", cancelled=True)
        print(f"{CLI_CANCELLED}; no partial output was kept", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - last resort: keep the protocol intact
        # a full disk, a read-only folder...: the user's to fix
        msg = system_error(exc, outs or _path_values(args))
        if msg is None:
            return _internal_error(exc)
        progress.emit_error(msg)
        print(f"{CLI_ERROR}{msg}", file=sys.stderr)
        return EXIT_REFUSED
    if outputs.get("interrupted") is True:  # stopped on request after a resumable checkpoint
        where = f"; the checkpoint in {outputs.get('model')} continues with --resume"
        progress.emit_error(f"cancelled{where}", cancelled=True)
        print(f"{CLI_CANCELLED}{where}", file=sys.stderr)
        return EXIT_CANCELLED
    try:
        _report_outputs(outputs)
    except BrokenPipeError:
        _silence_stdout()
    return 0


def _path_values(args: argparse.Namespace) -> list[str]:
    """The command's arguments that name existing files or folders (where a stage without an
    ``--out`` writes: score-pairs and filter-pairs update their folder in place)."""
    values = [v for v in vars(args).values() if isinstance(v, str) and v not in ("", "-")]
    return [v for v in values if os.path.sep in v or os.path.exists(v)]


def _internal_error(exc: BaseException) -> int:
    """A bug: the traceback, then one line in the protocol (exit 1)."""
    traceback.print_exc(file=sys.stderr)
    msg = f"{exc.__class__.__name__}: {exc} (please report this with the log)"
    progress.emit_error(f"internal error: {msg}")
    print(f"{CLI_INTERNAL_ERROR}{msg}", file=sys.stderr)
    return 1


@contextmanager
def _remove_new_folders_on_failure(outs: list[str]) -> Iterator[None]:
    """When the command fails, remove the output folders (and their parents) that it created
    and left empty: a run that fails early leaves nothing behind."""
    made: list[Path] = []
    for out in outs:
        here = Path(os.path.abspath(out))
        while not os.path.lexists(here) and here != here.parent:
            made.append(here)
            here = here.parent
    try:
        yield
    except BaseException:
        for folder in made:  # deepest first
            with suppress(OSError):
                if folder.is_dir() and not folder.is_symlink():
                    folder.rmdir()  # only when empty
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
