"""How many CPU threads the engine computes with, chosen once per command before torch starts.

An analyst's machine is never idle: QGIS and other programs share its cores. A thread that waits
for a core another program holds makes every step of a parallel loop wait, and OpenMP threads
that spin while they wait burn the core they would give back. So the engine counts the CPUs it
may use (``os.sched_getaffinity``), takes away what the rest of the machine keeps busy now (the
machine's CPU use over a quarter of a second, spread over all its CPUs: not the 1-minute load
average, which still counts the previous stage of a pipeline for a minute after it ended and
misses a program that has just started) and the cores the caller asks it to leave free (the QGIS
plugin leaves one to QGIS, :data:`~satsynth.contract.ENV_LEAVE_CORES`), and uses at least one
thread; ``--threads N`` overrides. A command that shares the machine makes its waiting threads
sleep (``OMP_WAIT_POLICY=PASSIVE``, ONNX Runtime without spinning); one that has every CPU of an
idle machine keeps OpenMP's default short spin, which is faster there. No torch: this runs
before torch is imported, since OpenMP reads its environment once, when torch loads it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from satsynth.contract import ENV_LEAVE_CORES

log = logging.getLogger("satsynth")

#: Environment the engine's OpenMP starts with unless the user set it: waiting threads sleep.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Variables that carry the thread count to OpenMP, MKL and OpenBLAS when torch loads them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why: the CPUs usable, the load seen, the cores left to others."""

    threads: int
    usable: int
    load: float
    leave: int
    reason: str

    def describe(self) -> str:
        """One log line: what was chosen and from what."""
        return (f"threads: {self.threads} ({self.reason}; {self.usable} usable CPU(s), "
                f"{self.load:.1f} CPU(s) busy with other work, {self.leave} left to other "
                f"programs)")

    @property
    def shares_machine(self) -> bool:
        """True unless this command computes on every CPU of an otherwise idle machine."""
        return self.leave > 0 or self.load >= 0.5 or self.threads < (os.cpu_count() or 1)


def usable_cpus(affinity: Callable[[int], set[int]] | None = None) -> int:
    """The CPUs this process may run on.

    Args:
        affinity (`Callable[[int], set[int]]`, *optional*):
            ``os.sched_getaffinity`` or a stand-in (tests); by default the platform's, and
            ``os.cpu_count()`` where it has none.

    Returns:
        `int`: the number of CPUs in the affinity mask, at least 1.
    """
    get = affinity or getattr(os, "sched_getaffinity", None)
    if get is not None:
        try:
            return max(1, len(get(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def machine_load(interval: float = 0.25) -> float:
    """How many of the machine's CPUs other work keeps busy now: its CPU use over ``interval``
    seconds (psutil) times its CPU count; the 1-minute load average where psutil cannot tell."""
    try:
        import psutil

        return psutil.cpu_percent(interval=interval) / 100.0 * (os.cpu_count() or 1)
    except Exception:  # noqa: BLE001 - no psutil or no /proc: fall back to the load average
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def choose_threads(asked: int | None = None, *, usable: int | None = None,
                   load: float | None = None, total: int | None = None,
                   leave: int | None = None) -> ThreadChoice:
    """The intra-op thread count, and why.

    ``asked`` when given (``--threads``), else the usable CPUs minus the share of the machine's
    busy CPUs that falls on them (rounded) minus ``leave``, at least 1.

    Args:
        asked (`int`, *optional*):
            ``--threads N``: taken as it is.
        usable (`int`, *optional*):
            The CPUs this process may use; defaults to :func:`usable_cpus`.
        load (`float`, *optional*):
            The machine's CPUs busy with other work; defaults to :func:`machine_load`.
        total (`int`, *optional*):
            The machine's CPUs; defaults to ``os.cpu_count()``.
        leave (`int`, *optional*):
            Cores left to other programs; defaults to :data:`~satsynth.contract.ENV_LEAVE_CORES`
            (0 when unset).

    Returns:
        `ThreadChoice`: the count with the figures it came from and the reason.
    """
    usable = usable_cpus() if usable is None else max(1, usable)
    total = max(usable, os.cpu_count() or usable) if total is None else max(usable, total)
    leave = _env_leave() if leave is None else max(0, leave)
    if asked is not None and asked > 0:
        return ThreadChoice(asked, usable, 0.0 if load is None else max(0.0, load), leave,
                            "--threads")
    load = machine_load() if load is None else max(0.0, load)
    busy_here = load * usable / total  # others' work spread over every CPU of the machine
    free = int(usable - busy_here + 0.5) - leave
    n = max(1, min(usable - leave, free))
    reason = "all usable CPUs" if n == usable else "the CPUs free of other work"
    return ThreadChoice(n, usable, load, leave, reason)


def _env_leave() -> int:
    try:
        return max(0, int(os.environ.get(ENV_LEAVE_CORES, "0")))
    except ValueError:
        return 0


def set_wait_policy(choice: ThreadChoice | None = None) -> None:
    """Make waiting OpenMP threads sleep instead of spinning when the command shares the machine.

    Must run before torch is imported (``OMP_WAIT_POLICY=PASSIVE`` is read when OpenMP starts).
    A policy the user set is kept.

    Args:
        choice (`ThreadChoice`, *optional*):
            The command's thread choice: nothing changes where it has every CPU of an idle
            machine (``choice.shares_machine`` is False; OpenMP's default short spin is faster
            there). Without it, threads always sleep.
    """
    if choice is not None and not choice.shares_machine:
        return
    for key, value in WAIT_POLICY.items():
        os.environ.setdefault(key, value)


def waits_sleep() -> bool:
    """Whether this process's waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``, set by
    :func:`set_wait_policy` or by the user): ONNX Runtime's thread pool follows the same choice."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def apply_threads(asked: int | None = None) -> ThreadChoice:
    """Choose the thread count and hand it to OpenMP/MKL and torch.

    The count goes to OpenMP/MKL through the environment, and to torch itself when it is already
    loaded; :func:`report_choice` logs it when the computing starts.

    Args:
        asked (`int`, *optional*):
            ``--threads N``; by default :func:`choose_threads` decides (``OMP_NUM_THREADS`` set by
            the user wins over that choice).

    Returns:
        `ThreadChoice`: what was chosen and why.
    """
    choice = choose_threads(asked)
    user_set = "OMP_NUM_THREADS" in os.environ and asked is None
    if user_set:  # the user's OMP_NUM_THREADS wins over the automatic choice
        try:
            n = max(1, int(os.environ["OMP_NUM_THREADS"]))
        except ValueError:
            n = choice.threads
        choice = ThreadChoice(n, choice.usable, choice.load, choice.leave, "OMP_NUM_THREADS")
    for key in THREAD_VARS:
        if key == "OMP_NUM_THREADS" or asked is not None or key not in os.environ:
            os.environ[key] = str(choice.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(choice.threads)
    global _chosen
    _chosen = choice
    log.debug(choice.describe())
    return choice


_chosen: ThreadChoice | None = None


def report_choice() -> None:
    """Log the command's thread choice once, when its computing starts (``resolve_device``).

    A command that stops on bad input says only what is wrong, in one line.
    """
    global _chosen
    if _chosen is not None:
        log.info(_chosen.describe())
        _chosen = None
