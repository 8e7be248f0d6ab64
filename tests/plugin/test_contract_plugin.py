"""The plugin follows the engine's contract, loaded by path from engine/satsynth/contract.py:
its class table refuses what the engine refuses with the engine's words, and its Processing
enums and defaults are the contract's lists and declared options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satsynth_qgis.algorithms import ALGORITHMS
from satsynth_qgis.contract import CANDIDATES, contract, contract_path
from satsynth_qgis.dock import params
from satsynth_qgis.dock.class_table import ClassRow, ClassTableError, rows_from_dict, validate_rows

REPO = Path(__file__).resolve().parents[2]
CASES = json.loads((REPO / "tests" / "class_table_cases.json").read_text(encoding="utf-8"))["cases"]


def test_in_a_checkout_the_plugin_loads_the_engines_own_file():
    assert contract_path() == (REPO / "engine" / "satsynth" / "contract.py").resolve()
    assert contract_path() in CANDIDATES
    import sys

    assert "satsynth" not in sys.modules  # loaded by path, not through the engine's package


@pytest.mark.parametrize("case", CASES, ids=[c["message"][14:60] for c in CASES])
def test_the_class_table_editor_refuses_with_the_engines_messages(case):
    """The same cases and messages as tests/engine/test_contract_engine.py checks in the engine."""
    with pytest.raises(ClassTableError) as err:
        rows_from_dict(case["table"], "classes.json")
    assert str(err.value) == case["message"]


def test_the_editor_reads_what_the_engine_reads_and_uses_its_default_colours():
    rows = rows_from_dict({"classes": [{"id": 4, "name": "water"},
                                       {"value": 9, "name": "road", "color": [1, 2, 3]}]})
    first = contract.hex_color(contract.default_color(0))
    assert rows == [ClassRow(4, "water", first), ClassRow(9, "road", "#010203")]
    with pytest.raises(ClassTableError, match="class ids must be unique, got \\[4, 4\\]"):
        validate_rows([ClassRow(4, "a", first), ClassRow(4, "b", first)])


_BUILT: dict[str, object] = {}  # the parameters live as long as their algorithm


def _algorithm(alg_id: str):
    if alg_id not in _BUILT:
        alg = next(cls() for cls in ALGORITHMS if cls.INFO.alg_id == alg_id)
        alg.initAlgorithm()
        _BUILT[alg_id] = alg
    return _BUILT[alg_id]


def _enum(alg_id: str, name: str) -> tuple[list[str], str]:
    p = _algorithm(alg_id).parameterDefinition(name)
    return list(p.options()), p.defaultValue()


@pytest.mark.parametrize(("alg_id", "name", "choices"), [
    ("train_segmenter", "ARCH", contract.ARCHITECTURES),
    ("train_segmenter", "MIXED_PRECISION", contract.MIXED_PRECISIONS),
    ("train_segmenter", "DEVICE", contract.DEVICES),
    ("run_experiment", "ARCH", contract.ARCHITECTURES),
    ("run_experiment", "BUDGET", contract.BUDGETS),
    ("run_pipeline", "ARCH", contract.ARCHITECTURES),
    ("run_pipeline", "GENERATOR_PRESET", contract.GENERATOR_PRESETS),
    ("train_generator", "PRESET", contract.GENERATOR_PRESETS),
    ("train_generator", "RECIPE", contract.RECIPES),
    ("train_generator", "CONDITION", contract.CONDITIONS),
    ("segment_raster", "RUNTIME", contract.RUNTIMES),
])
def test_the_algorithms_enums_are_the_contracts_lists(alg_id, name, choices):
    assert _enum(alg_id, name)[0] == list(choices)


def test_the_choices_with_a_plugin_entry_add_it_to_the_contracts_list():
    assert _enum("synthesize", "SAMPLER") == (["model default", *contract.SAMPLERS],
                                              "model default")
    assert _enum("run_experiment", "SAMPLER")[0] == ["model default", *contract.SAMPLERS]
    assert _enum("prepare_chips", "DATASET_LAYOUT") == (["none", *contract.LAYOUTS], "none")
    assert _enum("train_upsampler", "FACTOR")[0] == [str(f) for f in contract.UPSAMPLER_FACTORS]
    assert params.ENCODERS == (*contract.ENCODERS, contract.TINY_ENCODER)
    assert (params.ARCHITECTURES, params.SAMPLERS, params.DEVICES, params.BUDGETS) == (
        contract.ARCHITECTURES, contract.SAMPLERS, contract.DEVICES, contract.BUDGETS)


def test_the_algorithms_defaults_are_the_declared_options():
    seg, gen = contract.SegmenterTrainFields(), contract.GeneratorTrainFields()
    exp, predict = contract.ExperimentFields(), contract.PredictFields()
    alg = _algorithm("train_segmenter")
    defaults = {n: alg.parameterDefinition(n).defaultValue()
                for n in ("ARCH", "ENCODER", "EPOCHS", "PATIENCE", "SEED", "MIXED_PRECISION")}
    assert defaults == {"ARCH": seg.arch, "ENCODER": seg.encoder, "EPOCHS": seg.epochs,
                        "PATIENCE": seg.patience, "SEED": seg.seed,
                        "MIXED_PRECISION": seg.mixed_precision}
    alg = _algorithm("train_generator")
    assert [alg.parameterDefinition(n).defaultValue() for n in ("RECIPE", "PRESET", "CONDITION")
            ] == [gen.recipe, gen.preset, gen.condition]
    alg = _algorithm("run_experiment")
    assert alg.parameterDefinition("RATIOS").defaultValue() == "0,1,2,3,5"
    assert [alg.parameterDefinition(n).defaultValue() for n in
            ("SEEDS", "BUDGET", "EPOCHS", "PATIENCE", "VARIANTS", "SAMPLER_STEPS")] == [
        exp.seeds, exp.budget, exp.epochs, exp.patience, ",".join(exp.variants), exp.steps]
    alg = _algorithm("segment_raster")
    assert [alg.parameterDefinition(n).defaultValue() for n in ("TILE", "OVERLAP", "RUNTIME",
                                                                 "BATCH")
            ] == [predict.tile, predict.overlap, predict.runtime, predict.batch]


def test_tiling_parameters_take_the_declared_ranges_and_the_engines_rule():
    """TILE/OVERLAP/BATCH have PredictFields' min/max in every algorithm that shows them (the
    pipeline's minimum tile was 32 while the engine takes 16), and the checks give the
    contract's tiling rule."""
    for alg_id in ("segment_raster", "export_segmenter", "run_pipeline"):
        alg = _algorithm(alg_id)
        for param, field in (("TILE", "tile"), ("OVERLAP", "overlap")):
            p = alg.parameterDefinition(param)
            assert (p.minimum(), p.maximum()) == contract.field_bounds(
                contract.PredictFields, field), (alg_id, param)
    batch = _algorithm("segment_raster").parameterDefinition("BATCH")
    assert batch.minimum() == contract.field_bounds(contract.PredictFields, "batch")[0] == 0
    assert _algorithm("run_pipeline").parameterDefinition("TILE").minimum() == 16


def test_prepares_parameters_take_the_declared_defaults_and_ranges():
    """One range for prepare's options: the plugin's minimum chip size was 16 while the engine
    prepares 8 px chips; every prepare number parameter now has the contract's min/max."""
    prep = contract.PrepareFields()
    names = {"CHIP_SIZE": "chip_size", "VAL_FRACTION": "val_fraction",
             "LINE_BUFFER": "line_buffer", "MIN_LABELED": "min_labeled",
             "BLOCK_SIZE": "block_size"}
    alg = _algorithm("prepare_chips")
    for param, field in names.items():
        p = alg.parameterDefinition(param)
        low, high = contract.field_bounds(contract.PrepareFields, field)
        assert p.defaultValue() == getattr(prep, field), param
        assert (p.minimum(), p.maximum() if high is not None else None) == (low, high), param
    assert alg.parameterDefinition("CHIP_SIZE").minimum() == 8
    pipe = _algorithm("run_pipeline").parameterDefinition("CHIP_SIZE")
    assert (pipe.minimum(), pipe.maximum()) == contract.field_bounds(contract.PrepareFields,
                                                                     "chip_size")
