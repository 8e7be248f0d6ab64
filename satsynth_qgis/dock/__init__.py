"""The SatSynth dock panel (issue 7): layers in, stage buttons, progress, styled layers out.

The plugin creates :class:`DockController` with ``DockController(iface, plugin)`` and calls its
``initGui()`` and ``unload()``.
"""

from .controller import DockController

__all__ = ["DockController"]
