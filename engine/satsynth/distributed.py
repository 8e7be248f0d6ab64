"""The processes of one ``accelerate launch`` / ``torchrun`` run, for the stages that split work.

Training uses Accelerate's ``Accelerator``; synthesis and prediction only need to know which
process they are, wait for each other, and agree on a shared scratch folder, which Accelerate's
``PartialState`` gives (the same process group: gloo on CPUs, NCCL on GPUs). A plain
``satsynth ...`` is one process and never initializes torch.distributed.

Scratch folders live beside the output, so on several machines the output folder must be on a
file system every node sees (NFS, Lustre, a cloud bucket mounted as a folder).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satsynth import progress

log = logging.getLogger("satsynth")


def launch_rank() -> int:
    """This process's rank in an ``accelerate launch`` / ``torchrun`` run (``RANK``; 0 for a plain
    run): only rank 0 takes the run's output locks and writes its outputs."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 for a plain run)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Processes:
    """This process's place in the run: ``rank`` of ``world``, and its device."""

    rank: int
    world: int
    device: Any  # torch.device
    state: Any = None  # accelerate.PartialState, None for a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def shared(self, value: Any) -> Any:
        """``value`` as the main process has it (picklable)."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    @contextmanager
    def scratch(self, beside: Path, what: str) -> Iterator[Path]:
        """A folder next to ``beside`` that every process sees, removed by the main process once
        everyone has left the block."""
        name = self.shared(f".{beside.name}.{what}-{uuid.uuid4().hex[:12]}")
        path = beside.parent / name
        if self.is_main:
            path.mkdir(parents=True)
        self.barrier()
        if not path.is_dir():
            from satsynth.errors import SatSynthError

            raise SatSynthError(f"process {self.rank} cannot see the scratch folder the main "
                                "process made beside the output: on several machines the output "
                                "folder must be on a file system shared by all nodes", path)
        try:
            yield path
        finally:
            if self.is_main:
                shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def progress_on_main(self) -> Iterator[None]:
        """Progress from the main process only (the others' would interleave with it)."""
        if self.is_main:
            yield
            return
        before = progress.mode()
        progress.set_mode("quiet")
        try:
            yield
        finally:
            progress.set_mode(before)


def processes(device: str = "auto") -> Processes:
    """The processes of this run and this process's device: under ``accelerate launch`` or
    ``torchrun`` (``WORLD_SIZE`` > 1) each process gets its rank and, on GPUs, its own GPU
    (``LOCAL_RANK``); otherwise a single process on ``device``."""
    from satsynth.device import resolve_device

    dev = resolve_device(device)
    if launched_processes() <= 1:
        return Processes(0, 1, dev)
    from accelerate import PartialState

    state = PartialState(cpu=dev.type == "cpu")
    if dev.type == "cuda":
        dev = state.device  # cuda:LOCAL_RANK
    log.debug("process %d of %d on %s", state.process_index, state.num_processes, dev)
    return Processes(state.process_index, state.num_processes, dev, state)


def share(n: int, rank: int, world: int) -> range:
    """The contiguous part ``rank`` takes of ``n`` items split as evenly as possible."""
    lo = n * rank // world
    hi = n * (rank + 1) // world
    return range(lo, hi)
