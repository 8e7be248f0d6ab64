"""The SatSynth dock panel (issue 7): layers in, stage buttons, progress, styled layers out.

The plugin creates :class:`~.menu.DockMenu` with ``DockMenu(iface, plugin)`` and calls its
``initGui()`` and ``unload()``; the menu creates the panel (:class:`~.panel.SatSynthDock`).
"""
