"""The launcher every engine and set-up child goes through (satsynth_qgis.process): argument
lists, lines streamed as they come, cancel (SIGTERM, then kill), a clean environment."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import alive

from satsynth_qgis import process

REPO = Path(__file__).resolve().parents[2]


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text("import os, signal, sys, time\n" + textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def test_arguments_arrive_unchanged_without_a_shell(tmp_path):
    argv = script(tmp_path, "for a in sys.argv[1:]: print(a)")
    odd = ["a b", "$HOME", "; echo no", "'quoted'", "*"]
    got: list[tuple[str, str]] = []
    finished = process.run_streaming(argv + odd, lambda s, line: got.append((s, line)), grace_s=1)
    assert finished == process.Finished(0, False)
    assert got == [("out", a) for a in odd]


def test_lines_are_streamed_while_the_child_runs_and_stderr_is_kept_apart(tmp_path):
    argv = script(tmp_path, """
        print("first", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        time.sleep(1.5)
        print("last")
        sys.exit(3)
    """)
    seen: list[tuple[float, str, str]] = []
    start = time.monotonic()
    finished = process.run_streaming(
        argv, lambda s, line: seen.append((time.monotonic() - start, s, line)), grace_s=1)
    assert finished.returncode == 3 and not finished.cancelled
    # two pipes, two readers: the order between the streams is not defined, within each it is
    assert [line for _t, s, line in seen if s == "out"] == ["first", "last"]
    assert [line for _t, s, line in seen if s == "err"] == ["to stderr"]
    early = [t for t, _s, line in seen if line in ("first", "to stderr")]
    assert max(early) < 1.2, "the first lines waited for the child to finish"


def test_merged_stderr_arrives_on_one_stream_in_order(tmp_path):
    argv = script(tmp_path, """
        print("one", flush=True)
        print("two", file=sys.stderr, flush=True)
        print("three", flush=True)
    """)
    got: list[tuple[str, str]] = []
    process.run_streaming(argv, lambda s, line: got.append((s, line)), grace_s=1,
                          merge_stderr=True)
    assert got == [("out", "one"), ("out", "two"), ("out", "three")]


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["graceful", "stubborn"])
def test_cancel_terminates_then_kills_a_child_that_ignores_sigterm(tmp_path, ignores_sigterm):
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f"""
        if {ignores_sigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.05)
    """)
    start = time.monotonic()
    finished = process.run_streaming(
        argv, lambda _s, _line: None, grace_s=1.0,
        is_cancelled=lambda: pid_file.exists() and time.monotonic() - start > 0.5)
    elapsed = time.monotonic() - start
    assert finished.cancelled
    assert not alive(int(pid_file.read_text()))
    if ignores_sigterm:  # killed after the grace period
        assert finished.returncode == -9 and elapsed >= 1.0 + 0.5
    else:  # stopped by SIGTERM, which it handled
        assert finished.returncode == 130
    assert elapsed < 0.5 + 1.0 + 3.0


def test_cancel_also_stops_what_the_child_started(tmp_path):
    grandchild = tmp_path / "grandchild"
    argv = script(tmp_path, f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(grandchild)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    finished = process.run_streaming(argv, lambda _s, _l: None, grace_s=0.5,
                                     is_cancelled=grandchild.exists)
    assert finished.cancelled
    deadline = time.monotonic() + 2
    while alive(int(grandchild.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(int(grandchild.read_text()))


def test_a_failing_callback_leaves_no_child_behind(tmp_path):
    pid_file = tmp_path / "pid"
    argv = script(tmp_path, f"""
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("hello", flush=True)
        time.sleep(60)
    """)

    def boom(_stream: str, _line: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        process.run_streaming(argv, boom, grace_s=1)
    assert not alive(int(pid_file.read_text()))


def test_a_missing_program_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        process.run_streaming([str(tmp_path / "no such program")], lambda _s, _l: None,
                              grace_s=1)


def test_the_environment_is_cleaned_of_qgis_paths_and_extra_values_are_added(tmp_path,
                                                                             monkeypatch):
    for name in process.SCRUBBED_ENV:
        monkeypatch.setenv(name, "/from/qgis")
    monkeypatch.setenv("SATSYNTH_MARKER", "kept")
    argv = script(tmp_path, """
        import json
        print(json.dumps(dict(os.environ)))
    """)
    got: list[str] = []
    process.run_streaming(argv, lambda _s, line: got.append(line), grace_s=1,
                          env={"EXTRA": "yes"})
    import json

    env = json.loads(got[-1])
    assert not set(process.SCRUBBED_ENV) & set(env)
    assert env["SATSYNTH_MARKER"] == "kept" and env["EXTRA"] == "yes"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONIOENCODING"] == "utf-8"
    captured = process.run_captured([*script(tmp_path, "print(os.environ.get('PYTHONPATH'))")])
    assert captured is not None and captured.stdout.strip() == "None"


def test_the_launcher_imports_neither_qgis_nor_qt():
    code = ("import sys, satsynth_qgis.process; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qgis', 'PyQt5', 'PyQt6', 'sip')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=process.clean_environment(), check=True).stdout
    assert out.strip() == "[]"
