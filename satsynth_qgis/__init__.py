"""SatSynth for QGIS: joint image-mask diffusion augmentation, from the Processing toolbox.

The plugin runs in QGIS's own Python and never imports the deep-learning stack: every stage runs
the SatSynth engine (a separate Python environment) as a child process (see :mod:`.runner`).
"""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    """QGIS entry point."""
    from .plugin import SatSynthPlugin

    return SatSynthPlugin(iface)
