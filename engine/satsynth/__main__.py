"""Allow ``python -m satsynth`` (and ``accelerate launch -m satsynth``)."""

from satsynth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
