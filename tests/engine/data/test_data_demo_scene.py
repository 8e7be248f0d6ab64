"""The procedural demo scene: georeferenced, deterministic, every class, not its own mask."""

from __future__ import annotations

import numpy as np
import rasterio

from satsynth.data.classes import ClassTable
from satsynth.data.demo_scene import generate_scene, render_scene
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore


def test_scene_is_georeferenced_labeled_and_styled(tmp_path):
    r = generate_scene(tmp_path / "scene", size=512, pixel_size=0.5, seed=1)
    assert sorted(p.name for p in (tmp_path / "scene").iterdir()) == [
        "classes.json", "scene_image.tif", "scene_labels.qml", "scene_labels.tif"]
    table = ClassTable.load(r["classes"])
    assert table.names == ["bare land", "building", "road", "water", "vegetation"]
    with rasterio.open(r["image"]) as im, rasterio.open(r["labels"]) as lab:
        assert im.crs.to_epsg() == 32640 and lab.crs == im.crs
        assert im.res == (0.5, 0.5) and im.transform == lab.transform
        assert im.count == 3 and im.dtypes[0] == "uint8" and im.shape == (512, 512)
        cmap = lab.colormap(1)
        assert cmap[3][:3] == table.classes[3].color  # the colour table is embedded
        labels = lab.read(1)
        image = im.read()
    shares = np.bincount(labels.ravel(), minlength=256)[:5] / labels.size
    assert (shares > 0.01).all() and shares.sum() == 1.0
    # not trivially its mask: a per-pixel nearest-colour classifier gets much wrong, yet the
    # colours carry the classes (far better than the majority class)
    x = image.reshape(3, -1).T.astype(np.float32)
    y = labels.ravel()
    mu = np.stack([x[y == k].mean(0) for k in range(5)])
    acc = (((x[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1) == y).mean()
    assert shares.max() + 0.1 < acc < 0.95


def test_scene_is_deterministic_for_a_seed():
    a_img, a_lab = render_scene(256, 0.5, seed=7)
    b_img, b_lab = render_scene(256, 0.5, seed=7)
    c_img, c_lab = render_scene(256, 0.5, seed=8)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert (a_lab != c_lab).mean() > 0.1


def test_scene_prepares_into_a_dataset_like_the_demo(tmp_path):
    r = generate_scene(tmp_path / "scene", size=512, seed=0)
    out = prepare_dataset(tmp_path / "ds", images=[r["image"]], labels=[r["labels"]],
                          classes=r["classes"], chip_size=64)
    store = ChipStore(out)
    assert store.meta.crs == "EPSG:32640" and store.classes.num_classes == 5
    assert len(store.split("train")) > 30 and len(store.split("val")) > 5
    assert (store.meta.class_shares("train") > 0).all()
