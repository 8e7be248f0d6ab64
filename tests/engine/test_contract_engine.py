"""The engine follows its contract (satsynth.contract): class tables are refused with the
contract's messages, the CLI's choices and defaults are the contract's, and the engine's own
tables keyed by those names cover exactly the contract's lists."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from satsynth import contract
from satsynth.cli import build_parser
from satsynth.data.classes import ClassTable
from satsynth.errors import SatSynthError

CASES = json.loads((Path(__file__).resolve().parents[1] / "class_table_cases.json")
                   .read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["message"][14:60] for c in CASES])
def test_class_tables_are_refused_with_the_contracts_one_line_messages(case):
    with pytest.raises(SatSynthError) as err:
        ClassTable.from_dict(case["table"], where="classes.json")
    assert str(err.value) == case["message"]
    assert err.value.path == "classes.json"


def test_a_valid_table_round_trips_and_defaults_come_from_the_contract():
    table = ClassTable.from_dict([{"id": 4, "name": "water"}, {"value": 9, "name": "road",
                                                               "color": [1, 2, 3]}])
    assert [c.hex() for c in table.classes] == [contract.hex_color(contract.default_color(0)),
                                                "#010203"]
    assert ClassTable.from_dict(table.to_dict()) == table
    with pytest.raises(SatSynthError, match="the class table has no classes"):
        ClassTable([])


def _subcommand(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


def _option(command: str, flag: str):
    return next(a for a in _subcommand(command)._actions if flag in a.option_strings)


@pytest.mark.parametrize(("command", "flag", "choices"), [
    ("train-segmenter", "--arch", contract.ARCHITECTURES),
    ("train-segmenter", "--class-weights", contract.CLASS_WEIGHTS),
    ("train-segmenter", "--synthetic-mode", contract.SYNTHETIC_MODES),
    ("train-segmenter", "--lr-schedule", contract.LR_SCHEDULES),
    ("train-segmenter", "--mixed-precision", contract.MIXED_PRECISIONS),
    ("experiment", "--arch", contract.ARCHITECTURES),
    ("experiment", "--budget", contract.BUDGETS),
    ("experiment", "--sampler", contract.SAMPLERS),
    ("train-generator", "--preset", contract.GENERATOR_PRESETS),
    ("train-generator", "--recipe", contract.RECIPES),
    ("train-generator", "--encoding", contract.ENCODINGS),
    ("train-generator", "--prediction", contract.PREDICTIONS),
    ("train-generator", "--beta-schedule", contract.BETA_SCHEDULES),
    ("train-generator", "--snr-weighting", contract.SNR_WEIGHTINGS),
    ("train-generator", "--condition", contract.CONDITIONS),
    ("train-generator", "--mixed-precision", contract.MIXED_PRECISIONS),
    ("train-upsampler", "--factor", contract.UPSAMPLER_FACTORS),
    ("synthesize", "--sampler", contract.SAMPLERS),
    ("check", "--progress", contract.PROGRESS_MODES),
])
def test_the_cli_offers_the_contracts_choices(command, flag, choices):
    assert list(_option(command, flag).choices) == list(choices)


def test_the_cli_defaults_are_the_declared_options():
    seg, exp = contract.SegmenterTrainFields(), contract.ExperimentFields()
    for command, declared in (("train-segmenter", seg), ("experiment", exp)):
        parsed = vars(build_parser().parse_args([command, "ds", "--out", "o"]))
        for f in fields(declared):
            if f.name in parsed and f.name not in ("ratios", "variants"):
                assert parsed[f.name] == getattr(declared, f.name), (command, f.name)
    parsed = build_parser().parse_args(["experiment", "ds", "--out", "o"])
    from satsynth.workflows.experiment import parse_ratios

    assert parse_ratios(parsed.ratios) == exp.ratios
    assert parsed.variants.split(",") == exp.variants
    gen = contract.GeneratorTrainFields()
    parsed = vars(build_parser().parse_args(["train-generator", "ds", "--out", "o"]))
    for name in ("steps", "batch_size", "lr", "warmup", "ema_decay", "grad_accum", "seed",
                 "device", "snr_weighting", "mixed_precision", "recipe"):
        assert parsed[name] == getattr(gen, name), name
    prep = contract.PrepareFields()
    parsed = vars(build_parser().parse_args(["prepare", "--out", "o"]))
    for f in fields(prep):
        if f.name not in ("val_sources", "test_sources"):
            assert parsed[f.name] == getattr(prep, f.name), f.name
    assert parsed["background_ignore"] is False
    syn = contract.SynthesizeFields()
    parsed = vars(build_parser().parse_args(["synthesize", "m", "--count", "1", "--out", "o"]))
    assert {f.name: parsed[f.name] for f in fields(syn)} == vars(syn)


def test_the_option_classes_derive_from_the_declarations():
    from satsynth.generator.config import GeneratorTrainOptions
    from satsynth.segmenter.train import SegmenterTrainOptions

    assert issubclass(SegmenterTrainOptions, contract.SegmenterTrainFields)
    assert issubclass(GeneratorTrainOptions, contract.GeneratorTrainFields)
    assert vars(SegmenterTrainOptions()) == vars(contract.SegmenterTrainFields())


def test_the_engines_tables_cover_exactly_the_contracts_names():
    from satsynth.data.layouts import LAYOUTS
    from satsynth.generator.config import BETA_SCHEDULES, PRESETS, RECIPES
    from satsynth.segmenter import model, schedule
    from satsynth.workflows.protocol import VARIANTS

    assert tuple(PRESETS) == contract.GENERATOR_PRESETS
    assert tuple(RECIPES) == contract.RECIPES
    assert tuple(BETA_SCHEDULES) == contract.BETA_SCHEDULES
    assert {*model.SMP_CLASSES, contract.TINY_ARCH} == set(contract.ARCHITECTURES)
    assert set(schedule.LR_SCHEDULES) == set(contract.LR_SCHEDULES)
    assert tuple(VARIANTS) == contract.VARIANTS
    assert tuple(LAYOUTS) == contract.LAYOUTS


def test_output_kinds_are_recognised_by_the_contracts_markers(tmp_path):
    from satsynth.outputs import check_output

    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / contract.MODEL_MARKER).write_text(json.dumps({"kind": "segmenter"}))
    assert contract.output_kind(seg) == "segmenter"
    with pytest.raises(SatSynthError, match="is a segmenter model folder, not a dataset folder"):
        check_output(seg, "dataset")


def test_the_engines_log_lines_are_the_contracts(capsys):
    """The engine's log on stderr is the contract's ``LEVEL: message`` line, which the plugin
    parses back (a message with ': ' in it intact); a traceback's lines and the CLI's last line
    are not log lines."""
    import logging

    from satsynth import progress

    log = logging.getLogger("satsynth")
    saved = (log.handlers[:], log.level, log.propagate)
    try:
        progress.setup_logging(verbose=True)
        log.debug("3 bands")
        log.warning("scene.tif: %d%% nodata", 12)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed: reading")
    finally:
        log.handlers[:] = saved[0]
        log.setLevel(saved[1])
        log.propagate = saved[2]
    lines = capsys.readouterr().err.splitlines()
    parsed = [contract.parse_log_line(line) for line in lines]
    assert parsed[:3] == [("DEBUG", "3 bands"), ("WARNING", "scene.tif: 12% nodata"),
                          ("ERROR", "failed: reading")]
    assert lines[3].startswith("Traceback") and set(parsed[3:]) == {None}
    assert lines[0] == contract.format_log_line("DEBUG", "3 bands")
    assert contract.parse_log_line(f"{contract.CLI_ERROR}scene.tif: no such file") is None


def test_prepare_refuses_what_is_outside_the_declared_ranges():
    """PrepareConfig checks the ranges declared with PrepareFields (the plugin's min/max)."""
    from satsynth.data.prepare import PrepareConfig

    low, high = contract.field_bounds(contract.PrepareFields, "chip_size")
    assert PrepareConfig(chip_size=low).stride == low and PrepareConfig(chip_size=high)
    for bad, message in ((dict(chip_size=low - 1), f"--chip-size must be in {low}..{high}, got 7"),
                         (dict(chip_size=high + 1), "--chip-size must be in"),
                         (dict(val_fraction=0.95), "--val-fraction must be in 0..0.9, got 0.95"),
                         (dict(min_labeled=1.5), "--min-labeled must be in 0..1"),
                         (dict(max_chips=0), "--max-chips must be at least 1, got 0"),
                         (dict(line_buffer=-1.0), "--line-buffer must be at least 0"),
                         (dict(stride=0), "--stride must be in 1..4096, got 0"),
                         (dict(chip_size=16, stride=17), "stride must be between 1 and the chip")):
        with pytest.raises(SatSynthError, match=message):
            PrepareConfig(**bad)


def test_predict_and_export_refuse_tilings_by_the_contracts_rule(tmp_path):
    """One tiling rule (contract.tiling_problems, with the ranges PredictFields declares) for
    predict, export and the plugin: the engine raises its first line."""
    from satsynth.predict.windows import check_tiling

    low, high = contract.field_bounds(contract.PredictFields, "tile")
    assert (low, high) == (16, 8192)
    assert contract.tiling_problems(low, low // 2, 0) == []
    assert contract.tiling_problems(512, 64, 8, multiple=32, arch="fpn") == []
    for args, message in (((8, 0), "--tile 8 must be in 16..8192"),
                          ((high + 512, 64), "--tile 8704 must be in 16..8192"),
                          ((500, 64, 1, 32, "fpn"), "--tile 500 must be in 16..8192 and a "
                                                    "multiple of 32 for a fpn model"),
                          ((64, 33), "--overlap 33 must be at least 0 and at most half the tile "
                                     "(32 px for 64 px tiles)"),
                          ((64, -1), "--overlap -1 must be at least 0"),
                          ((64, 16, -1), "--batch -1 must be at least 1 (or 0")):
        problems = contract.tiling_problems(*args)
        assert len(problems) == 1 and problems[0].startswith(message), problems
        with pytest.raises(SatSynthError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_tiling(*args, *(0, 1, "")[len(args) - 2:])
    named = contract.tiling_problems(64, 40, names={"overlap": "the overlap ({} px)"})
    assert named == ["the overlap (40 px) must be at least 0 and at most half the tile (32 px "
                     "for 64 px tiles)"]


def test_the_tiny_encoder_rule_is_the_contracts():
    """One reading of 'w<width>d<depth>': the engine builds what the contract accepts and refuses
    the rest with one line (the plugin's encoder check uses the same function)."""
    from satsynth.data.normalize import Normalizer
    from satsynth.segmenter.model import SegmenterConfig, build_segmenter

    assert contract.tiny_encoder(contract.TINY_ENCODER) == (16, 2)
    assert contract.tiny_encoder("w8d0") == (8, 0)
    for bad in ("wide", "w0d2", "w8", "resnet18", "w8d2x"):
        assert contract.tiny_encoder(bad) is None, bad
        cfg = SegmenterConfig(arch="tiny", encoder=bad, in_channels=3,
                              classes=ClassTable.from_dict([{"id": 0, "name": "a"},
                                                            {"id": 1, "name": "b"}]),
                              normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"))
        with pytest.raises(SatSynthError, match="takes an encoder like 'w16d2'"):
            build_segmenter(cfg)
