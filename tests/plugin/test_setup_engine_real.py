"""*Set up engine* for real (opt-in: ``make test-setup``): the dock's dialog builds a new
environment in a temporary folder from the package index this machine reaches (torch, the
engine and its dependencies), records it as the engine, and *Check engine* then runs through that
setting. Takes minutes and a few GB of disk; skipped unless ``SATSYNTH_TEST_SETUP=1``.

The torch source is the plugin's own choice unless ``SATSYNTH_TORCH_INDEX`` /
``SATSYNTH_TORCH_PACKAGES`` say otherwise (``make test-setup`` passes them through), e.g. where
download.pytorch.org is out of reach but PyPI or a mirror is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import RecordingFeedback, ensure_provider
from dock_fixtures import wait_until

from satsynth_qgis import process, runner, setup_engine

pytestmark = [
    pytest.mark.setup_real,
    pytest.mark.skipif(os.environ.get("SATSYNTH_TEST_SETUP") != "1",
                       reason="opt-in, slow and downloads torch: run it with 'make test-setup'"),
]


@pytest.fixture
def engine_folder():
    base = Path(os.environ.get("SATSYNTH_TEST_SETUP_DIR") or tempfile.gettempdir())
    folder = Path(tempfile.mkdtemp(prefix="satsynth setup test ", dir=base))
    yield folder / "engine env"
    shutil.rmtree(folder, ignore_errors=True)


def test_set_up_engine_for_real_then_check_engine_through_the_new_setting(engine_folder,
                                                                          monkeypatch):
    from satsynth_qgis.dock.setup_dialog import SetupEngineDialog

    runner.set_engine_setting("")
    monkeypatch.delenv(runner.ENV_VAR, raising=False)  # only the new setting may name the engine
    dialog = SetupEngineDialog()
    dialog.python_widget.setFilePath(os.environ.get("SATSYNTH_TEST_SETUP_PYTHON", ""))
    dialog.venv_widget.setFilePath(str(engine_folder))
    start = time.monotonic()
    dialog.start_button.click()
    assert dialog.task is not None, dialog.step_label.text()
    assert wait_until(lambda: dialog.task is None, timeout=3600, interval=0.5), \
        "the set-up did not finish within an hour"
    seconds = time.monotonic() - start
    print(f"\nSet up engine took {seconds:.0f} s ({seconds / 60:.1f} min)")
    status = dialog.step_label.text()
    assert status.startswith("Engine ready: SatSynth"), status + "\n" + "\n".join(
        dialog.log.toPlainText().splitlines()[-30:])
    python = setup_engine.venv_python(engine_folder)
    assert runner.engine_setting() == str(python)
    assert not setup_engine.staging_dir_for(engine_folder).exists()
    assert os.access(python, os.X_OK)
    # the console script pip wrote names the final Python, not the staging folder, and runs
    script = engine_folder / "bin" / "satsynth"
    text = script.read_text(errors="replace")
    assert str(python) in text and str(setup_engine.staging_dir_for(engine_folder)) not in text
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300,
                          env=process.clean_environment())
    assert done.returncode == 0 and "train-generator" in done.stdout, done.stderr[-2000:]

    import processing

    ensure_provider()
    fb = RecordingFeedback()
    result = processing.run("satsynth:check_engine", {}, feedback=fb)
    assert result["ENGINE"] == f"{python} -m satsynth"  # the new setting, not another engine
    assert result["VERSION"] and result["TORCH"] and result["DEVICE"] in ("cpu", "cuda", "mps")
    assert any("computes on" in m for m in fb.infos)
    print(f"Check engine: SatSynth {result['VERSION']}, torch {result['TORCH']} on "
          f"{result['DEVICE']}")
