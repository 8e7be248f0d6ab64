"""The segmenter's learning-rate schedule, driven by the run's budget (steps or wall time).

A warm-up + cosine (or warm-up + constant) schedule from ``diffusers.optimization`` is laid over
``PROGRESS_UNITS`` units of *progress* rather than over optimizer steps. Progress is the larger
of the share of planned steps done and the share of the time budget used (as the generator's
time budget does), so a run with ``--minutes`` anneals its learning rate by its deadline whatever
the machine's speed, and a run without one follows its planned steps exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

#: Resolution of the progress axis the library schedule is laid over.
PROGRESS_UNITS = 10_000
#: ``--lr-schedule`` choices -> diffusers scheduler names.
LR_SCHEDULES = {"cosine": "cosine", "constant": "constant_with_warmup"}


class BudgetSchedule:
    """Steps a diffusers warm-up schedule along the run's progress.

    ``total_steps``: planned optimizer steps (None: only the time budget counts);
    ``seconds``: the time budget (None: only the steps count); ``clock``: seconds (monotonic).
    """

    def __init__(self, optimizer: Any, kind: str = "cosine", warmup_fraction: float = 0.05,
                 total_steps: int | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from diffusers.optimization import get_scheduler

        if total_steps is None and seconds is None:
            raise ValueError("a schedule needs planned steps or a time budget")
        if kind not in LR_SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; choose from {', '.join(LR_SCHEDULES)}")
        self.total_steps = total_steps
        self.seconds = seconds
        self.clock = clock
        self.start = clock()
        warmup = max(1, int(round(warmup_fraction * PROGRESS_UNITS)))
        self.scheduler = get_scheduler(LR_SCHEDULES[kind], optimizer, num_warmup_steps=warmup,
                                       num_training_steps=PROGRESS_UNITS)
        self.step_done = 0

    def elapsed(self) -> float:
        """Seconds since the schedule started."""
        return self.clock() - self.start

    def progress(self, steps: int | None = None) -> float:
        """Share of the budget used after ``steps`` optimizer steps (default: those done), in
        [0, 1]."""
        p = 0.0
        if self.total_steps:
            p = (self.step_done if steps is None else steps) / self.total_steps
        if self.seconds:
            p = max(p, self.elapsed() / self.seconds)
        return min(max(p, 0.0), 1.0)

    def out_of_time(self) -> bool:
        """True once the time budget is used up."""
        return self.seconds is not None and self.elapsed() >= self.seconds

    def finished(self) -> bool:
        """True once the planned steps are done or the time is up."""
        return (self.total_steps is not None and self.step_done >= self.total_steps) or \
            self.out_of_time()

    def step(self, progress: float | None = None) -> None:
        """Record one optimizer step and move the learning rate to the progress reached
        (``progress`` overrides the measured one, e.g. the maximum over processes)."""
        self.step_done += 1
        p = self.progress() if progress is None else progress
        target = min(PROGRESS_UNITS, math.ceil(p * PROGRESS_UNITS))
        while self.scheduler.last_epoch < target:
            self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        """The learning rate(s) now in use."""
        return self.scheduler.get_last_lr()


__all__ = ["LR_SCHEDULES", "PROGRESS_UNITS", "BudgetSchedule"]
