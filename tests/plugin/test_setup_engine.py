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

from satsynth_qgis import process, runner, setup_engine
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
                                   build_dir=build, environ={})
    staging = tmp_path / "My Engine" / ".env.satsynth-setup"
    assert plan.staging_dir == staging
    spy = str(staging / "bin" / "python")
    names = [s.name for s in plan.steps]
    assert names == ["check free disk space", "create the environment", "update pip",
                     "install torch", "copy the engine source", "install the SatSynth engine",
                     "check the engine", "put the environment in place"]
    argv = {s.name: s.argv for s in plan.steps}
    assert argv["create the environment"] == ["/usr/bin/python3", "-m", "venv", "--clear",
                                              str(staging)]
    assert argv["update pip"] == [spy, "-m", "pip", "install", "--upgrade", "pip"]
    assert argv["install torch"] == [spy, "-m", "pip", "install", "--upgrade", "--index-url",
                                     "https://download.pytorch.org/whl/cu126", "torch",
                                     "torchvision"]
    assert argv["install the SatSynth engine"] == [
        spy, "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "only-if-needed",
        str(build / "satsynth-src")]
    assert argv["check the engine"] == [spy, "-m", "satsynth", "check", "--progress", "json"]
    assert plan.engine_python == venv / "bin" / "python"  # what is recorded: the final place
    assert "CUDA (RTX" in plan.summary() and str(venv) in plan.summary()
    # Windows layout: Scripts\python.exe
    win = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                  platform="win32", build_dir=build, environ={})
    torch_step = next(s for s in win.steps if s.name == "install torch")
    assert torch_step.argv[0] == str(staging / "Scripts" / "python.exe")
    assert "--index-url" in torch_step.argv and torch_step.argv[-3].endswith("/cpu")
    # the .exe launchers name the staging Python inside: pip writes them anew once moved
    assert win.steps[-1].argv == [str(venv / "Scripts" / "python.exe"), "-m", "pip", "install",
                                  "--force-reinstall", "--no-deps", str(build / "satsynth-src")]
    assert names[-1] == "put the environment in place"  # elsewhere the move is the last step


def test_a_mirror_or_pinned_torch_can_be_asked_for(tmp_path):
    def torch_argv(environ):
        plan = setup_engine.build_plan(tmp_path / "env", engine_src=REPO, python=PY311, gpu=None,
                                       platform="linux", environ=environ)
        return next(s.argv for s in plan.steps if s.name == "install torch")[5:]

    assert torch_argv({"SATSYNTH_TORCH_INDEX": "pypi",
                       "SATSYNTH_TORCH_PACKAGES": "torch==2.14.1 torchvision==0.29.1"}) == [
        "torch==2.14.1", "torchvision==0.29.1"]
    assert torch_argv({"SATSYNTH_TORCH_INDEX": "https://mirror.example/torch"}) == [
        "--index-url", "https://mirror.example/torch", "torch", "torchvision"]


def test_copying_the_engine_source_takes_only_what_pip_needs(tmp_path):
    plan = setup_engine.build_plan(tmp_path / "env", engine_src=REPO, python=PY311, gpu=None,
                                   build_dir=tmp_path / "b")
    step = next(s for s in plan.steps if s.name == "copy the engine source")
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


def _steps(plan: setup_engine.SetupPlan, *names: str) -> list[Step]:
    return [s for s in plan.steps if s.name in names]


def test_a_real_venv_is_built_aside_and_moved_into_a_path_with_spaces(tmp_path):
    """Create the environment for real (without pip: fast) in the staging folder, then move it in
    place: the Python runs from its final folder and console scripts name the final Python."""
    venv = tmp_path / "QGIS profiles" / "satsynth engine"
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                   platform=sys.platform, build_dir=tmp_path / "b", environ={})
    create, place = _steps(plan, "create the environment", "put the environment in place")
    create.argv = [*create.argv[:-1], "--without-pip", create.argv[-1]]  # no ensurepip: fast
    staging = plan.staging_dir
    assert staging is not None

    def console_script() -> None:  # what pip writes for an entry point
        script = staging / "bin" / "satsynth"
        script.write_text(f"#!{staging}/bin/python\nimport sys\n")
        assert not venv.exists()  # nothing at the final place before the very last step

    plan.steps = [create, Step("install the SatSynth engine", action=console_script), place]
    lines: list[str] = []
    fractions: list[float] = []
    report = setup_engine.run_plan(plan, on_line=lines.append,
                                   on_progress=lambda f, _m: fractions.append(f))
    assert report == {}
    assert not staging.exists()
    assert (venv / "pyvenv.cfg").is_file()
    assert (venv / "bin" / "satsynth").read_text().startswith(f"#!{venv}/bin/python\n")
    import subprocess

    prefix = subprocess.run([str(setup_engine.venv_python(venv)), "-c",
                             "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            env=process.clean_environment(), check=True).stdout.strip()
    assert Path(prefix) == venv
    assert any(line.startswith("== create the environment:") for line in lines)
    assert f'"{staging}"' in "\n".join(lines)  # the logged command quotes the spaced path
    assert fractions[-1] == 1.0


def _failing_plan(tmp_path: Path, output: str, venv: Path | None = None
                  ) -> setup_engine.SetupPlan:
    """The real plan's first steps (disk check, a real venv) and a pip step that fails with
    ``output`` (what pip prints in that situation)."""
    venv = venv or tmp_path / "engine env"
    plan = setup_engine.build_plan(venv, engine_src=REPO, python=PY311, gpu=None,
                                   platform=sys.platform, build_dir=tmp_path / "b", environ={})
    disk, create, torch_step, place = _steps(plan, "check free disk space",
                                             "create the environment", "install torch",
                                             "put the environment in place")
    create.argv = [*create.argv[:-1], "--without-pip", create.argv[-1]]
    torch_step.argv = [sys.executable, "-c",
                       f"import sys; print({output!r}); sys.exit(1)"]
    plan.steps = [disk, create, torch_step, place]
    return plan


NO_NETWORK = ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, "
              "status=None)) after connection broken by 'NewConnectionError(\"<pip._vendor."
              "urllib3.connection.HTTPSConnection object at 0x7f>: Failed to establish a new "
              "connection: [Errno -3] Temporary failure in name resolution\")': /whl/cpu/torch/\n"
              "ERROR: Could not find a version that satisfies the requirement torch "
              "(from versions: none)\nERROR: No matching distribution found for torch")
DISK_FULL = ("Installing collected packages: torch\nERROR: Could not install packages due to "
             "an OSError: [Errno 28] No space left on device")


@pytest.mark.parametrize("output, said", [
    (NO_NETWORK, "The package index could not be reached: no network connection, or a proxy "
                 "is needed."),
    (DISK_FULL, "The disk is full (No space left on device)."),
])
def test_no_network_or_a_full_disk_is_said_plainly_and_leaves_no_environment(tmp_path, output,
                                                                             said):
    plan = _failing_plan(tmp_path, output)
    lines: list[str] = []
    with pytest.raises(SetupError) as err:
        setup_engine.run_plan(plan, on_line=lines.append)
    text = str(err.value)
    assert text.startswith(f"Set up engine failed at step 'install torch': {said}")
    assert "What to do: Check the internet connection" in text
    assert plan.staging_dir is not None and not plan.staging_dir.exists()
    assert not plan.venv_dir.exists()  # nothing the plugin could pick up
    assert f"Removing the unfinished environment {plan.staging_dir}" in lines


def test_too_little_free_space_stops_before_anything_is_written(tmp_path, monkeypatch):
    from collections import namedtuple

    from satsynth_qgis.setup import places

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(places.shutil, "disk_usage",
                        lambda _p: usage(100 * 1024**3, 99 * 1024**3, 1024**3))
    plan = _failing_plan(tmp_path, "never runs")
    with pytest.raises(SetupError) as err:
        setup_engine.run_plan(plan)
    assert str(err.value) == (
        f"Set up engine failed at step 'check free disk space': {tmp_path} has 1.0 GB free; the "
        "engine's environment needs about 4 GB. What to do: Free some space, or choose an "
        "environment folder on another disk.")
    assert sorted(tmp_path.iterdir()) == []


def test_a_failed_repair_keeps_the_working_environment_and_the_setting(tmp_path, monkeypatch):
    """Re-running the set-up over a working engine and failing (no network) leaves that engine
    and the recorded setting as they were."""
    monkeypatch.setattr(runner, "SETTING_KEY", "SatSynthTests/engine_python_repair")
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("the working engine")
    runner.set_engine_setting(str(venv / "bin" / "python"))
    task = setup_engine.setup_task(_failing_plan(tmp_path, NO_NETWORK, venv))
    outcome: list[tuple] = []
    task.finishedWith.connect(lambda ok, err, rep: outcome.append((ok, err, rep)))
    QgsApplication.taskManager().addTask(task)
    assert wait_until(lambda: outcome, timeout=60)
    ok, err, _rep = outcome[0]
    assert not ok and "could not be reached" in err
    assert (venv / "bin" / "python").read_text() == "the working engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env"]
    assert runner.engine_setting() == str(venv / "bin" / "python")


def test_a_python_that_is_too_old_is_refused_in_the_dialog_before_anything_starts(
        tmp_path, fake_bin, monkeypatch):
    from satsynth_qgis.dock.setup_dialog import SetupEngineDialog

    monkeypatch.setattr(runner, "SETTING_KEY", "SatSynthTests/engine_python_old")
    runner.set_engine_setting("")
    old = _script(fake_bin / "python3.9", 'echo "3.9.18"\n')
    dialog = SetupEngineDialog()
    dialog.python_widget.setFilePath(str(old))
    dialog.venv_widget.setFilePath(str(tmp_path / "env"))
    dialog.start_button.click()
    assert dialog.task is None
    assert "Python 3.9.18; the engine needs 3.10 or newer" in dialog.step_label.text()
    assert not (tmp_path / "env").exists() and not (tmp_path / ".env.satsynth-setup").exists()
    assert runner.engine_setting() == ""


def test_cancel_removes_the_unfinished_environment(tmp_path):
    import time

    plan = _failing_plan(tmp_path, "unused")
    slow = Step("install torch", [sys.executable, "-c", "import time; time.sleep(60)"])
    plan.steps = [plan.steps[1], slow, plan.steps[-1]]
    start = time.monotonic()
    with pytest.raises(setup_engine.SetupCancelled):
        setup_engine.run_plan(plan, is_cancelled=lambda: (
            plan.staging_dir.exists() and time.monotonic() - start > 1.0))
    assert not plan.staging_dir.exists() and not plan.venv_dir.exists()


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
