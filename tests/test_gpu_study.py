"""scripts/gpu_study.sh: without a CUDA GPU it says so, runs nothing and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_study_says_there_is_no_gpu_and_exits_0(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the study would run")
    out = tmp_path / "study"
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(out)],
                       env={"SATSYNTH_PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "no CUDA GPU here" in p.stdout and "nothing was run" in p.stdout
    assert not out.exists()  # nothing written
