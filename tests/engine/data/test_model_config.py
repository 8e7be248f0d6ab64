"""Model configs hold ClassTable/Normalizer objects; config.json keeps its layout byte for byte:
a folder written now equals one written before for the same model, and folders written before
load."""

from __future__ import annotations

import json

import pytest

from satsynth import FORMAT_VERSION, __version__
from satsynth.checkpoint import load_config, save_model_dir
from satsynth.data.classes import ClassInfo, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError
from satsynth.generator.config import ArchConfig, DiffusionConfig, GeneratorConfig
from satsynth.generator.upsampler import UpsamplerConfig
from satsynth.segmenter.model import SegmenterConfig, load_segmenter_config

TABLE = ClassTable([ClassInfo(3, "water", (31, 78, 156)), ClassInfo(7, "road", (84, 130, 242))],
                   ignore_ids=[0], ignore_colors=[(0, 0, 0)])
NORM = Normalizer([1.5, 2.0], [200.0, 210.25], "uint16")

# config.json's layout before the configs held objects: the keys in this order, these values
CLASSES_JSON = {"classes": [{"id": 3, "name": "water", "color": "#1f4e9c"},
                            {"id": 7, "name": "road", "color": "#5482f2"}],
                "ignore_ids": [0], "ignore_colors": ["#000000"]}
NORM_JSON = {"low": [1.5, 2.0], "high": [200.0, 210.25], "dtype": "uint16",
             "method": "percentile-2-98"}
SEGMENTER_JSON = {
    "arch": "tiny", "encoder": "w4d1", "in_channels": 2, "classes": CLASSES_JSON,
    "normalization": NORM_JSON, "chip_size": 64, "crs": "EPSG:32640", "pixel_size": [0.5, 0.5],
    "metrics": {"miou": 0.5}, "training": {"epochs": 1}}
GENERATOR_JSON = {
    "arch": {"block_widths": [32, 64, 64], "layers_per_block": 1, "attention": False},
    "diffusion": {"num_train_timesteps": 1000, "beta_schedule": "cosine",
                  "prediction_type": "v_prediction"},
    "encoding": "onehot", "classes": CLASSES_JSON, "normalization": NORM_JSON, "bands": 2,
    "dtype": "uint16", "chip_size": 32, "crs": "EPSG:32640", "pixel_size": [1.0, 1.0],
    "source_extent": [0, 0, 10, 10], "y_up": True, "real_class_shares": [0.4, 0.6],
    "condition": "none", "source_chip_size": None, "dataset": "", "model_id": "gen-x", "step": 3,
    "training": {"steps": 3}}
UPSAMPLER_JSON = {
    **GENERATOR_JSON, "crs": None, "pixel_size": None, "source_extent": None,
    "real_class_shares": [], "model_id": "", "step": 0, "training": {}, "base_size": 16}


def _segmenter() -> SegmenterConfig:
    return SegmenterConfig(arch="tiny", encoder="w4d1", in_channels=2, classes=TABLE,
                           normalization=NORM, chip_size=64, crs="EPSG:32640",
                           pixel_size=[0.5, 0.5], metrics={"miou": 0.5}, training={"epochs": 1})


def _generator() -> GeneratorConfig:
    return GeneratorConfig(arch=ArchConfig(), diffusion=DiffusionConfig(), encoding="onehot",
                           classes=TABLE, normalization=NORM, bands=2, dtype="uint16",
                           chip_size=32, crs="EPSG:32640", pixel_size=[1.0, 1.0],
                           source_extent=[0, 0, 10, 10], real_class_shares=[0.4, 0.6],
                           model_id="gen-x", step=3, training={"steps": 3})


def _upsampler() -> UpsamplerConfig:
    return UpsamplerConfig(arch=ArchConfig(), diffusion=DiffusionConfig(), encoding="onehot",
                           classes=TABLE, normalization=NORM, bands=2, dtype="uint16",
                           chip_size=32, base_size=16)


def _old_file(kind: str, config: dict) -> str:
    """config.json as SatSynth wrote it before (satsynth.io.write_json of the same keys)."""
    return json.dumps({"kind": kind, "format_version": FORMAT_VERSION,
                       "satsynth_version": __version__, **config}, indent=2) + "\n"


CASES = [("segmenter", _segmenter, SEGMENTER_JSON, SegmenterConfig),
         ("generator", _generator, GENERATOR_JSON, GeneratorConfig),
         ("upsampler", _upsampler, UPSAMPLER_JSON, UpsamplerConfig)]


@pytest.mark.parametrize(("kind", "make", "old", "config_type"), CASES, ids=[c[0] for c in CASES])
def test_config_json_written_now_is_the_old_layout_byte_for_byte(tmp_path, kind, make, old,
                                                                 config_type):
    cfg = make()
    assert isinstance(cfg.classes, ClassTable) and isinstance(cfg.normalization, Normalizer)
    assert cfg.num_classes == 2
    save_model_dir(tmp_path / kind, kind, cfg.to_dict(), {})
    assert (tmp_path / kind / "config.json").read_text(encoding="utf-8") == _old_file(kind, old)


@pytest.mark.parametrize(("kind", "make", "old", "config_type"), CASES, ids=[c[0] for c in CASES])
def test_config_json_in_the_old_layout_loads_as_objects(tmp_path, kind, make, old, config_type):
    folder = tmp_path / kind
    folder.mkdir()
    (folder / "config.json").write_text(_old_file(kind, old), encoding="utf-8")
    cfg = config_type.from_dict(load_config(folder, kind), folder / "config.json")
    assert cfg == make()
    assert cfg.classes == TABLE and cfg.normalization == NORM
    assert cfg.classes.ids == [3, 7] and cfg.classes.ignore_colors == [(0, 0, 0)]
    save_model_dir(tmp_path / "again", kind, cfg.to_dict(), {})  # and is written back unchanged
    assert (tmp_path / "again" / "config.json").read_text(encoding="utf-8") == _old_file(kind, old)


def test_an_incomplete_config_json_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    old = {k: v for k, v in SEGMENTER_JSON.items() if k != "normalization"}
    (folder / "config.json").write_text(_old_file("segmenter", old), encoding="utf-8")
    with pytest.raises(SatSynthError, match="segmenter config.json is incomplete") as exc:
        load_segmenter_config(folder)
    assert exc.value.path == str(folder / "config.json")
