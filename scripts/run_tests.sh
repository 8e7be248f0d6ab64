#!/usr/bin/env bash
# Run every test: the engine's in .venv, the plugin's under QGIS's own Python, offscreen.
# Fails when any suite fails or collects no tests (pytest exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."
ENGINE_PY=".venv/bin/python"
QGIS_PY="${QGIS_PYTHON:-/usr/bin/python3}"
status=0

run() {
  local name="$1"; shift
  echo "=== $name: $*"
  "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then
    echo "=== $name: no tests were collected: that is a failure" >&2
    status=1
  elif [ $rc -ne 0 ]; then
    echo "=== $name: FAILED (exit $rc)" >&2
    status=1
  fi
}

run "lint" .venv/bin/ruff check engine satsynth_qgis tests benchmarks scripts
# -m "": every marker (slow, realdata, setup_real too), which a plain `pytest` skips (pyproject's
# addopts); a -m among this script's arguments comes later and wins.
run "engine tests" "$ENGINE_PY" -m pytest -q -p no:cacheprovider -m "" tests/engine tests/test_*.py "$@"
run "plugin tests (QGIS)" env QT_QPA_PLATFORM=offscreen SATSYNTH_PYTHON="$PWD/$ENGINE_PY" \
  "$QGIS_PY" -m pytest -q -p no:cacheprovider -m "" tests/plugin "$@"
exit $status
