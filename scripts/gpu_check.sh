#!/usr/bin/env bash
# The GPU path, end to end (scripts/gpu_check.py): every stage on one CUDA GPU at the paper's scale
# for a short budget (about 8 minutes), each output checked, per-stage throughput and peak GPU
# memory printed; exits non-zero on any failure. Without a GPU it says so and exits 0.
#   scripts/gpu_check.sh [--data DUBAI_DIR] [--minutes 2.5] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${SATSYNTH_PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py "$@"
