"""Core pieces shared by every stage: class tables, chip store, atomic writes, protocol."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from satsynth.data.classes import ClassTable, write_qml
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipStore, ChipStoreWriter, StoreMeta
from satsynth.errors import SatSynthError
from satsynth.io import atomic_dir, atomic_path


def _meta(k: int = 3) -> StoreMeta:
    return StoreMeta(classes=ClassTable.from_values(range(1, k + 1)), bands=2, dtype="uint16",
                     chip_size=8, normalizer=Normalizer([0, 0], [1000, 1000], "uint16"),
                     crs="EPSG:32640", pixel_size=(0.5, 0.5), sources=[{"image": "a.tif"}])


def test_chip_store_round_trip_keeps_chips_georeference_and_counts(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 1000, (5, 2, 8, 8), dtype=np.uint16)
    labels = rng.integers(0, 3, (5, 8, 8), dtype=np.uint8)
    labels[0, 0, :4] = 255
    with ChipStoreWriter(tmp_path / "ds", _meta(), {"train": 10, "val": 10}) as w:
        for i in range(3):
            w.add("train", imgs[i], labels[i], (0.5, 0, 100 + 4 * i, 0, -0.5, 200), col=8 * i)
        for i in range(3, 5):
            w.add("val", imgs[i], labels[i], (0.5, 0, 300, 0, -0.5, 200))
    store = ChipStore(tmp_path / "ds")
    tr, va = store.split("train"), store.split("val")
    assert len(tr) == 3 and len(va) == 2 and len(store) == 5
    np.testing.assert_array_equal(tr.images, imgs[:3])
    np.testing.assert_array_equal(va.labels, labels[3:])
    assert tr.transforms[2].tolist() == [0.5, 0, 108, 0, -0.5, 200]
    expected = np.bincount(labels[:3].ravel(), minlength=256)[:3]
    assert store.meta.class_pixels["train"] == expected.tolist()
    assert store.meta.crs == "EPSG:32640"
    import geopandas as gpd

    idx = gpd.read_file(tmp_path / "ds" / "chips.gpkg")
    assert len(idx) == 5 and set(idx["split"]) == {"train", "val"}
    assert idx.crs.to_epsg() == 32640
    assert idx.geometry.iloc[0].bounds == (100.0, 196.0, 104.0, 200.0)
    # nothing temporary left behind
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_chip_store_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with ChipStoreWriter(tmp_path / "ds", _meta(), {"train": 4}) as w:
            w.add("train", np.zeros((2, 8, 8), np.uint16), np.zeros((8, 8), np.uint8), (1, 0, 0, 0, -1, 0))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_missing_store_and_bad_metadata_give_clear_errors(tmp_path):
    with pytest.raises(SatSynthError, match="dataset folder not found"):
        ChipStore(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(SatSynthError, match="run 'satsynth prepare'"):
        ChipStore(tmp_path / "x")
    (tmp_path / "x" / "dataset.json").write_text("{not json")
    with pytest.raises(SatSynthError, match="not valid JSON"):
        ChipStore(tmp_path / "x")


def test_normalizer_maps_to_unit_range_and_back():
    n = Normalizer([100, 0], [1100, 255], "uint16")
    x = np.array([[[100, 600, 1100]], [[0, 128, 255]]], dtype=np.uint16)
    y = n.to_model(x)
    assert y.min() == -1 and y.max() == 1
    np.testing.assert_allclose(y[0, 0, 1], 0.0, atol=1e-6)
    np.testing.assert_array_equal(n.from_model(y), x)


def test_class_table_reads_palette_files_and_maps_ids(tmp_path):
    f = tmp_path / "classes.json"
    f.write_text(json.dumps({"ignore_color": "#000000", "classes": [
        {"id": 3, "name": "Water", "color": "#0000ff"}, {"id": 7, "name": "Road", "color": "#888888"}]}))
    t = ClassTable.load(f)
    assert t.names == ["Water", "Road"] and t.ignore_colors == [(0, 0, 0)]
    lut = t.id_to_index_lut()
    assert lut[3] == 0 and lut[7] == 1 and lut[5] == 255
    assert t.index_to_id_lut()[1] == 7
    assert ClassTable.from_dict(t.to_dict()).classes == t.classes
    qml = write_qml(tmp_path / "s.qml", t).read_text()
    assert 'value="7"' in qml and 'label="Road"' in qml
    f.write_text('{"classes": [{"id": 1, "name": "a", "color": "blue"}]}')
    with pytest.raises(SatSynthError, match="bad colour 'blue'"):
        ClassTable.load(f)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir_through_a_link_replaces_the_folder_it_points_to_and_keeps_the_link(tmp_path):
    real = tmp_path / "store"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with atomic_dir(link) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "store"]


def test_cli_reports_errors_as_one_json_line_and_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "satsynth", "info", str(tmp_path / "missing"),
                        "--progress", "json"], capture_output=True, text=True)
    assert r.returncode == 2
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "error" and "dataset folder not found" in events[-1]["message"]
    assert "Traceback" not in r.stderr


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error(tmp_path):
    """``satsynth info DS | head -1``: a closed pipe ends the command quietly, exit 0."""
    rng = np.random.default_rng(0)
    with ChipStoreWriter(tmp_path / "ds", _meta(), {"train": 2}) as w:
        for _ in range(2):
            w.add("train", rng.integers(0, 1000, (2, 8, 8), dtype=np.uint16),
                  rng.integers(0, 3, (8, 8), dtype=np.uint8), (0.5, 0, 100, 0, -0.5, 200))
    p = subprocess.Popen([sys.executable, "-m", "satsynth", "info", str(tmp_path / "ds")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader goes away before the command has printed anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "internal error" not in err
