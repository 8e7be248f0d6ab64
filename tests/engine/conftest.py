"""Fixtures shared by the engine's tests."""

from __future__ import annotations

from collections.abc import Iterator

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
