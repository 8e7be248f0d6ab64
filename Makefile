# SatSynth: the two commands a newcomer needs are `make demo` and `make test`.
# Both are idempotent: environments are created once and reused while their inputs are unchanged.

PYTHON      ?= python3
QGIS_PYTHON ?= /usr/bin/python3
VENV        := .venv
ENGINE_PY   := $(VENV)/bin/python
STAMP       := $(VENV)/.satsynth-installed
DEMO_OUT    ?= demo-output
PYTEST_ARGS ?=

.PHONY: demo test test-engine test-plugin test-setup lint package bench gpu-check venv qgis clean

## Engine environment: a venv with the engine installed (editable) and its test tools.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(ENGINE_PY) || $(PYTHON) -m venv $(VENV)
	$(ENGINE_PY) -m pip install --quiet --upgrade pip
	$(ENGINE_PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

## QGIS (Debian's packages) for the plugin's tests; installed only when missing and apt is usable.
qgis:
	@bash scripts/ensure_qgis.sh "$(QGIS_PYTHON)"

## The demo: embedded scene -> chips -> generator -> synthetic pairs -> segmenters -> report.
demo: $(STAMP)
	$(VENV)/bin/satsynth demo --out $(DEMO_OUT)

## Every test (every marker: slow and realdata too, as CI runs them; a plain `pytest` skips those):
## the engine's in its venv, the plugin's under QGIS's own Python (offscreen).
test: $(STAMP) qgis
	@bash scripts/run_tests.sh $(PYTEST_ARGS)

test-engine: $(STAMP)
	$(ENGINE_PY) -m pytest -q -m "" tests/engine tests/test_*.py $(PYTEST_ARGS)

test-plugin: $(STAMP) qgis
	QT_QPA_PLATFORM=offscreen SATSYNTH_PYTHON=$(abspath $(ENGINE_PY)) $(QGIS_PYTHON) -m pytest -q -m "" tests/plugin $(PYTEST_ARGS)

## Set up engine for real (opt-in, minutes, a few GB): a new environment in a temporary folder from
## the package index this machine reaches, then Check engine through it. SATSYNTH_TORCH_INDEX
## (a pip index URL, or "pypi") and SATSYNTH_TORCH_PACKAGES choose another torch source.
test-setup: qgis
	SATSYNTH_TEST_SETUP=1 QT_QPA_PLATFORM=offscreen $(QGIS_PYTHON) -m pytest -q -s -p no:cacheprovider \
	  -m setup_real tests/plugin/test_setup_engine_real.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check engine satsynth_qgis tests benchmarks scripts

package:
	$(QGIS_PYTHON) scripts/package_plugin.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(ENGINE_PY) $$b || exit 1; done

## The GPU path on one CUDA GPU (about 8 minutes; Dubai data in ../shared/datasets): every stage,
## checked, with throughput and peak GPU memory; exits 0 without running where there is no GPU.
gpu-check: $(STAMP)
	SATSYNTH_PYTHON=$(ENGINE_PY) bash scripts/gpu_check.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache $(DEMO_OUT)
