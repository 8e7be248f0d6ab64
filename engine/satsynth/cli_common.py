"""What the stages' command lines share: adding a sub-command, and the options many of them take.

Every stage's ``cli.py`` adds its sub-commands with :func:`add_command` from its
``register(subparsers, common)``; ``satsynth.cli`` builds the parser from them.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from satsynth.contract import DEVICES

#: A command: parsed arguments -> its outputs (name -> path or value), reported in the final
#: ``done`` event (JSON mode) or as ``key: value`` lines.
Command = Callable[[argparse.Namespace], dict[str, Any]]


def add_command(subparsers: Any, common: argparse.ArgumentParser, name: str, func: Command,
                help: str) -> argparse.ArgumentParser:
    """Add sub-command ``name``, which runs ``func``, with the common options (``--progress``,
    ``--verbose``): ``help`` is its line in ``satsynth --help``, ``func``'s docstring its
    description in ``satsynth NAME --help``."""
    p = subparsers.add_parser(name, parents=[common], help=help, description=inspect.getdoc(func))
    p.set_defaults(func=func)
    return p


def add_device(p: Any, default: str = DEVICES[0]) -> None:
    """``--device``: where the models run (every stage's default: auto)."""
    p.add_argument("--device", default=default,
                   help="auto, cpu, cuda, cuda:N or mps (default %(default)s)")


def add_seed(p: Any, default: int, what: str = "random seed") -> None:
    """``--seed``: the seed of the command's random choices (``what`` says which)."""
    p.add_argument("--seed", type=int, default=default, help=f"{what} (default %(default)s)")


def add_batch_size(p: Any, default: int, what: str = "chips per step") -> None:
    """``--batch-size``: how many chips (or pairs) go through the model at once."""
    p.add_argument("--batch-size", type=int, default=default, help=f"{what} (default %(default)s)")
