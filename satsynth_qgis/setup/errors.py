"""How a set-up ends early: a failed step (named, with what to do) or the user's cancel."""

from __future__ import annotations


class SetupError(Exception):
    """A set-up step failed; the message names the step and what to do."""

    def __init__(self, step: str, problem: str, advice: str = "") -> None:
        self.step = step
        self.problem = problem
        self.advice = advice
        text = f"Set up engine failed at step '{step}': {problem}"
        if advice:
            text += f" What to do: {advice}"
        super().__init__(text)


class SetupCancelled(Exception):
    """The user cancelled the set-up."""
