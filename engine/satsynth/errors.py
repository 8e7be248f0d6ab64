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
