"""The "Set up engine" action: its plan (exact commands, torch build), one real step, failures and
recording the engine setting. Nothing here downloads torch."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from dock_fixtures import wait_until
from qgis.core import QgsApplication

from satsynth_qgis import runner, setup_engine
from satsynth_qgis.setup_engine import GpuInfo, PythonInfo, SetupError, Step

REPO = Path(__file__).resolve().parents[2]
PY311 = PythonInfo("/usr/bin/python3", (3, 11, 2))


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A folder first on PATH for fake tools (nvidia-smi, python)."""
    folder = tmp_path / "fake bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def fake_nvidia_smi(folder: Path, cuda: str, name: str = "NVIDIA RTX A4000") -> None:
    _script(folder / "nvidia-smi", f"""
if [ "$1" = "--query-gpu=name" ]; then echo "{name}"; exit 0; fi
cat <<EOF
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: {cuda}     |
|   0  {name}   Off  | 00000000:01:00.0 Off |                  Off |
+-----------------------------------------------------------------------------+
EOF
""")


@pytest.mark.parametrize("cuda, index", [
    ("12.4", "https://download.pytorch.org/whl/cu124"),
    ("12.5", "https://download.pytorch.org/whl/cu124"),  # newest build the driver supports
    ("13.0", "https://download.pytorch.org/whl/cu128"),
    ("11.4", "https://download.pytorch.org/whl/cpu"),  # driver too old for any CUDA build
])
def test_torch_build_follows_nvidia_smi(fake_bin, cuda, index):
    fake_nvidia_smi(fake_bin, cuda)
    gpu = setup_engine.detect_gpu()
    assert gpu == GpuInfo(("NVIDIA RTX A4000",), tuple(int(x) for x in cuda.split(".")))
    assert setup_engine.torch_index_url(gpu, "linux") == index


def test_no_gpu_means_the_cpu_build_and_macos_uses_pypi(fake_bin, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin))  # no nvidia-smi anywhere
    assert setup_engine.detect_gpu() is None
    assert setup_engine.torch_index_url(None, "linux") == "https://download.pytorch.org/whl/cpu"
    assert setup_engine.torch_index_url(None, "win32") == "https://download.pytorch.org/whl/cpu"
    assert setup_engine.torch_index_url(None, "darwin") is None


def test_the_plan_is_exact_argument_lists_and_paths_with_spaces_stay_single_arguments(tmp_path):
    venv = tmp_path / "My Engine" / "env"
    build = tmp_path / "build dir"
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=PY311,
                                   gpu=GpuInfo(("RTX",), (12, 6)), platform="linux",
                                   build_dir=build)
    vpy = str(venv / "bin" / "python")
    names = [s.name for s in plan.steps]
    assert names == ["create the environment", "update pip", "install torch",
                     "copy the engine source", "install the SatSynth engine", "check the engine"]
    argv = {s.name: s.argv for s in plan.steps}
    assert argv["create the environment"] == ["/usr/bin/python3", "-m", "venv", str(venv)]
    assert argv["update pip"] == [vpy, "-m", "pip", "install", "--upgrade", "pip"]
    assert argv["install torch"] == [vpy, "-m", "pip", "install", "--upgrade", "--index-url",
                                     "https://download.pytorch.org/whl/cu126", "torch",
                                     "torchvision"]
    assert argv["install the SatSynth engine"] == [
        vpy, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed",
        str(build / "satsynth-src")]
    assert argv["check the engine"] == [vpy, "-m", "satsynth", "check", "--progress", "json"]
    assert plan.engine_python == Path(vpy)
    assert "CUDA (RTX" in plan.summary() and str(venv) in plan.summary()
    # Windows layout: Scripts\python.exe
    win = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                  platform="win32", build_dir=build)
    assert win.steps[1].argv[0] == str(venv / "Scripts" / "python.exe")
    assert "--index-url" in win.steps[2].argv and win.steps[2].argv[-3].endswith("/cpu")


def test_a_broken_environment_is_recreated(tmp_path):
    venv = tmp_path / "env"
    (venv / "lib").mkdir(parents=True)  # a folder without its python: broken
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                   platform="linux", build_dir=tmp_path / "b")
    assert plan.steps[0].argv == ["/usr/bin/python3", "-m", "venv", "--clear", str(venv)]


def test_copying_the_engine_source_takes_only_what_pip_needs(tmp_path):
    plan = setup_engine.build_plan(tmp_path / "env", engine_src=REPO, python=PY311, gpu=None,
                                   build_dir=tmp_path / "b")
    step = next(s for s in plan.steps if s.action is not None)
    step.action()
    src = tmp_path / "b" / "satsynth-src"
    assert (src / "pyproject.toml").is_file() and (src / "README.md").is_file()
    assert (src / "engine" / "satsynth" / "cli.py").is_file()
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.egg-info"))


def test_find_python_names_the_step_and_the_fix(fake_bin):
    old = _script(fake_bin / "python3.8", 'echo "3.8.10"\n')
    with pytest.raises(SetupError) as err:
        setup_engine.find_python(str(old))
    text = str(err.value)
    assert "step 'find Python'" in text and "Python 3.8.10" in text and "3.10 or newer" in text
    with pytest.raises(SetupError, match="does not run as a Python"):
        setup_engine.find_python(str(fake_bin / "no such python"))
    found = setup_engine.find_python(sys.executable)
    assert found.version[:2] == sys.version_info[:2]


def test_find_python_searches_path_and_skips_too_old_interpreters(fake_bin, monkeypatch):
    _script(fake_bin / "python3", 'echo "3.9.1"\n')
    _script(fake_bin / "python3.12", 'echo "3.12.4"\n')
    monkeypatch.setenv("PATH", str(fake_bin))
    assert setup_engine.find_python() == PythonInfo(str(fake_bin / "python3.12"), (3, 12, 4))
    (fake_bin / "python3.12").unlink()
    with pytest.raises(SetupError, match=r"no Python 3\.10 or newer .*python3 \(3\.9\.1\)"):
        setup_engine.find_python()


def _plan_with(tmp_path: Path, steps: list[Step]) -> setup_engine.SetupPlan:
    return setup_engine.SetupPlan(PY311, tmp_path / "env", REPO, None, None, steps)


def test_one_real_step_creates_a_venv_in_a_path_with_spaces(tmp_path):
    venv = tmp_path / "QGIS profiles" / "satsynth engine"
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                   platform=sys.platform, build_dir=tmp_path / "b")
    create = plan.steps[0]
    create.argv = [*create.argv[:-1], "--without-pip", create.argv[-1]]  # no ensurepip: fast
    lines: list[str] = []
    fractions: list[float] = []
    report = setup_engine.run_plan(
        _plan_with(tmp_path, [create]), on_line=lines.append,
        on_progress=lambda f, _m: fractions.append(f))
    assert report == {}
    assert setup_engine.venv_python(venv).exists()
    assert (venv / "pyvenv.cfg").is_file()
    assert any(line.startswith("== create the environment:") for line in lines)
    assert f'"{venv}"' in "\n".join(lines)  # the logged command quotes the spaced path
    assert fractions[-1] == 1.0


def test_a_failing_step_is_named_with_its_exit_code_last_error_and_advice(tmp_path):
    ok = Step("create the environment", [sys.executable, "-c", "print('fine')"], weight=1)
    bad = Step("install torch", [sys.executable, "-c",
                                 "import sys; print('Collecting torch'); "
                                 "print('ERROR: No matching distribution found for torch'); "
                                 "sys.exit(1)"],
               weight=1, advice="Check the internet connection.")
    never = Step("check the engine", [sys.executable, "-c", "raise SystemExit(3)"])
    lines: list[str] = []
    with pytest.raises(SetupError) as err:
        setup_engine.run_plan(_plan_with(tmp_path, [ok, bad, never]), on_line=lines.append)
    text = str(err.value)
    assert text.startswith("Set up engine failed at step 'install torch'")
    assert "exited with code 1" in text and "No matching distribution found for torch" in text
    assert text.endswith("What to do: Check the internet connection.")
    assert "Collecting torch" in lines  # pip's output was streamed
    assert not any(line.startswith("== check the engine") for line in lines)  # later steps did not run


def test_cancel_stops_a_running_step(tmp_path):
    import time

    slow = Step("install torch", [sys.executable, "-c", "import time; time.sleep(60)"])
    start = time.monotonic()
    with pytest.raises(setup_engine.SetupCancelled):
        setup_engine.run_plan(_plan_with(tmp_path, [slow]),
                              is_cancelled=lambda: time.monotonic() - start > 0.5)
    assert time.monotonic() - start < 10


def test_the_task_streams_output_and_records_the_engine_setting(tmp_path, monkeypatch):
    """The QgsTask as the dialog runs it: pip-like lines stream in, the check report comes back,
    and the new environment's Python becomes the engine setting."""
    monkeypatch.setattr(runner, "SETTING_KEY", "SatSynthTests/engine_python")
    venv = tmp_path / "env with space"
    create = Step("create the environment",
                  [sys.executable, "-m", "venv", "--without-pip", str(venv)], weight=1)
    pip = Step("install the SatSynth engine", [sys.executable, "-c",
               "print('Collecting satsynth'); print('Successfully installed satsynth-0.1.0')"],
               weight=1)
    check = Step("check the engine", [sys.executable, "-c",
                 "import json; print(json.dumps({'event': 'done', 'outputs': "
                 "{'satsynth': '0.1.0', 'torch': '2.5.0+cpu', 'device': 'cpu'}}))"], weight=1)
    plan = setup_engine.SetupPlan(PY311, venv, REPO, None, None, [create, pip, check])
    task = setup_engine.setup_task(plan)
    lines: list[str] = []
    outcome: list[tuple] = []
    task.line.connect(lines.append)
    task.finishedWith.connect(lambda ok, err, rep: outcome.append((ok, err, rep)))
    QgsApplication.taskManager().addTask(task)
    assert wait_until(lambda: outcome, timeout=60)
    ok, err, rep = outcome[0]
    assert ok, err
    assert rep == {"satsynth": "0.1.0", "torch": "2.5.0+cpu", "device": "cpu"}
    assert "Successfully installed satsynth-0.1.0" in lines
    assert runner.engine_setting() == str(setup_engine.venv_python(venv))
