"""The "Set up engine" action, one job per module (``satsynth_qgis.setup_engine`` gathers their
public names for the dock and the tests):

- :mod:`.errors`: the two ways a set-up ends early (:class:`SetupError`, :class:`SetupCancelled`);
- :mod:`.python`: finding a Python that can create the environment;
- :mod:`.gpu`: what ``nvidia-smi`` reports and the torch build that fits it;
- :mod:`.places`: where the environment goes, the free space it needs, copying the engine source
  and moving the finished environment into place;
- :mod:`.plan`: the plan, plain data (:func:`build_plan`);
- :mod:`.pip`: what pip's output says went wrong;
- :mod:`.run`: running the plan step by step;
- :mod:`.task`: the background task inside QGIS.
"""
