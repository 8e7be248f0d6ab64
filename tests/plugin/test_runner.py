"""The engine runner's protocol handling, against small scripts that play the engine's part."""

from __future__ import annotations

import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import alive
from qgis.core import QgsProcessingException

from satsynth_qgis import runner
from satsynth_qgis.contract import contract


def fake_engine(tmp_path: Path, body: str) -> runner.Engine:
    """An engine whose command runs ``body`` (Python) with the arguments in sys.argv."""
    script = tmp_path / "fake_engine.py"
    script.write_text("import json, os, sys, time, signal\n"
                      "def emit(**e):\n    print(json.dumps(e), flush=True)\n"
                      + textwrap.dedent(body), encoding="utf-8")
    return runner.Engine((sys.executable, str(script)), "test")


def test_progress_logs_and_outputs_are_relayed(tmp_path, feedback):
    engine = fake_engine(tmp_path, """
        print("INFO: reading image.tif", file=sys.stderr, flush=True)
        print("DEBUG: 3 bands", file=sys.stderr, flush=True)
        print("WARNING: 12% nodata", file=sys.stderr, flush=True)
        emit(event="progress", stage="prepare", fraction=0.25, message="chips 1/4", eta_s=3.0)
        print("some library printed this", flush=True)
        print("{not json", flush=True)
        print("[1, 2]", flush=True)
        emit(event="progress", stage="prepare", fraction=1.0, message="chips 4/4")
        emit(event="done", outputs={"dataset": "/tmp/ds", "args": sys.argv[1:]})
    """)
    result = runner.run_engine(["prepare", "--image", "a b.tif"], feedback, engine=engine)
    assert result.outputs["dataset"] == "/tmp/ds"
    # arguments arrive intact (no shell): the space stays inside one argument
    assert result.outputs["args"] == ["prepare", "--image", "a b.tif", "--progress", "json"]
    assert 25.0 in feedback.progress_values and feedback.progress_values[-1] == 100.0
    assert any("chips 1/4" in t for t in feedback.texts)
    assert "reading image.tif" in feedback.infos
    assert "3 bands" in feedback.debug
    assert "12% nodata" in feedback.warnings
    garbage = "\n".join(feedback.console)
    for line in ("some library printed this", "{not json", "[1, 2]"):
        assert line in garbage
    assert feedback.commands and "prepare" in feedback.commands[0]


def test_engine_error_message_becomes_the_exception(tmp_path, feedback):
    engine = fake_engine(tmp_path, """
        emit(event="progress", stage="prepare", fraction=0.1, message="reading")
        emit(event="error", message="labels.tif: label values not in the class table: 7 (120 px)")
        print("satsynth: error: labels.tif: ...", file=sys.stderr)
        sys.exit(2)
    """)
    with pytest.raises(QgsProcessingException) as info:
        runner.run_engine(["prepare"], feedback, engine=engine)
    assert "label values not in the class table: 7" in str(info.value)
    assert isinstance(info.value, runner.EngineError) and info.value.exit_code == 2
    # the engine's own words travel as data (what a pre-check shows), not parsed out of ours
    assert info.value.engine_message == (
        "labels.tif: label values not in the class table: 7 (120 px)")


def test_crash_without_protocol_reports_the_log_tail(tmp_path, feedback):
    engine = fake_engine(tmp_path, """
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ImportError: libcudart.so.12: cannot open shared object file", file=sys.stderr)
        sys.exit(1)
    """)
    with pytest.raises(runner.EngineError) as info:
        runner.run_engine(["train-generator"], feedback, engine=engine)
    msg = str(info.value)
    assert "exit code 1" in msg and "libcudart.so.12" in msg
    assert info.value.engine_message is None


def test_success_without_outputs_is_an_error(tmp_path, feedback):
    engine = fake_engine(tmp_path, "emit(event='progress', stage='x', fraction=1.0)\n")
    with pytest.raises(runner.EngineError, match="without reporting its outputs"):
        runner.run_engine(["check"], feedback, engine=engine)


def _cancel_after(feedback, seconds: float) -> None:
    threading.Timer(seconds, feedback.cancel).start()


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["graceful", "stubborn"])
def test_cancel_stops_the_engine_within_5_s(tmp_path, feedback, ignores_sigterm):
    pid_file = tmp_path / "pid"
    engine = fake_engine(tmp_path, f"""
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        if {ignores_sigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            def stop(*_):
                emit(event="error", message="cancelled", cancelled=True)
                sys.exit(130)
            signal.signal(signal.SIGTERM, stop)
        for i in range(10000):
            emit(event="progress", stage="train-generator", fraction=i / 10000)
            time.sleep(0.05)
    """)
    _cancel_after(feedback, 1.0)
    start = time.monotonic()
    with pytest.raises(runner.EngineCancelled, match="Cancelled"):
        runner.run_engine(["train-generator"], feedback, engine=engine, grace_s=2.0)
    elapsed = time.monotonic() - start
    pid = int(pid_file.read_text())
    assert elapsed < 1.0 + 5.0, f"cancel took {elapsed:.1f} s"
    assert not alive(pid), "the engine process is still running after cancel"


def test_cancel_also_reaches_the_engines_worker_processes(tmp_path, feedback):
    child_pid = tmp_path / "child"
    engine = fake_engine(tmp_path, f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(child_pid)!r}, "w").write(str(child.pid))
        while True:
            emit(event="progress", stage="train", fraction=None)
            time.sleep(0.1)
    """)
    _cancel_after(feedback, 1.0)
    with pytest.raises(runner.EngineCancelled):
        runner.run_engine(["train"], feedback, engine=engine, grace_s=1.0)
    deadline = time.monotonic() + 2
    while alive(int(child_pid.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(int(child_pid.read_text()))


def test_qgis_python_and_proj_paths_do_not_leak_into_the_engine(tmp_path, feedback, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")
    monkeypatch.setenv("PROJ_LIB", "/usr/share/proj")
    monkeypatch.setenv("SATSYNTH_MARKER", "kept")
    engine = fake_engine(tmp_path, """
        keys = ("PYTHONPATH", "PROJ_LIB", "SATSYNTH_MARKER", "PYTHONUNBUFFERED")
        emit(event="done", outputs={k: os.environ.get(k) for k in keys})
    """)
    out = runner.run_engine(["check"], feedback, engine=engine).outputs
    assert out == {"PYTHONPATH": None, "PROJ_LIB": None, "SATSYNTH_MARKER": "kept",
                   "PYTHONUNBUFFERED": "1"}


def test_the_engine_leaves_a_core_to_qgis_unless_told_otherwise(tmp_path, feedback, monkeypatch):
    monkeypatch.delenv(contract.ENV_LEAVE_CORES, raising=False)
    engine = fake_engine(tmp_path, f"""
        emit(event="done", outputs={{"leave": os.environ.get({contract.ENV_LEAVE_CORES!r})}})
    """)
    out = runner.run_engine(["check"], feedback, engine=engine).outputs
    assert out == {"leave": str(contract.PLUGIN_LEAVE_CORES)} and contract.PLUGIN_LEAVE_CORES == 1
    monkeypatch.setenv(contract.ENV_LEAVE_CORES, "0")  # the user's own setting is kept
    assert runner.run_engine(["check"], feedback, engine=engine).outputs == {"leave": "0"}


# --- finding the engine ---------------------------------------------------------------------------

def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_command_for_python_cli_and_venv(tmp_path):
    py = _executable(tmp_path / "env" / "bin" / "python")
    cli = _executable(tmp_path / "bin" / "satsynth")
    assert runner.command_for(str(py)) == (str(py), "-m", "satsynth")
    assert runner.command_for(str(cli)) == (str(cli),)
    assert runner.command_for(str(tmp_path / "env")) == (str(py), "-m", "satsynth")
    assert runner.command_for(str(tmp_path / "missing" / "python")) is None
    assert runner.command_for(str(tmp_path / "bin")) is None  # a folder that is not a venv


@pytest.fixture
def clean_search(monkeypatch, tmp_path):
    """No engine anywhere: empty setting, no SATSYNTH_PYTHON, no checkout, empty PATH."""
    old = runner.engine_setting()
    runner.set_engine_setting("")
    monkeypatch.delenv(runner.ENV_VAR, raising=False)
    monkeypatch.setattr(runner, "checkout_root", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    yield
    runner.set_engine_setting(old)


def test_search_order_setting_then_env_then_path(clean_search, tmp_path, monkeypatch):
    on_path = _executable(tmp_path / "pathbin" / "satsynth")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert runner.find_engine().command == (str(on_path),)
    env_py = _executable(tmp_path / "envpy" / "python")
    monkeypatch.setenv(runner.ENV_VAR, str(env_py))
    assert runner.find_engine().command[0] == str(env_py)
    setting_py = _executable(tmp_path / "setting" / "bin" / "python")
    runner.set_engine_setting(str(tmp_path / "setting"))
    engine = runner.find_engine()
    assert engine.command == (str(setting_py), "-m", "satsynth")
    assert "setting" in engine.source


def test_engine_not_found_explains_what_to_do(clean_search, tmp_path, monkeypatch):
    monkeypatch.setenv(runner.ENV_VAR, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(runner.EngineNotFound) as info:
        runner.find_engine()
    msg = str(info.value)
    assert "not found" in msg
    assert str(tmp_path / "nowhere" / "python") in msg  # says where it looked
    assert "Engine Python" in msg and "SATSYNTH_PYTHON" in msg and "Set up engine" in msg
    assert "python3 -m venv" in msg


def test_checkout_venv_is_found_when_running_from_the_repository(clean_search, tmp_path,
                                                                 monkeypatch):
    py = _executable(tmp_path / "repo" / ".venv" / "bin" / "python")
    monkeypatch.setattr(runner, "checkout_root", lambda: tmp_path / "repo")
    engine = runner.find_engine()
    assert engine.command == (str(py), "-m", "satsynth") and engine.source == "source checkout"

