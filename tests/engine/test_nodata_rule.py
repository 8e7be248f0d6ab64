"""One rule for which pixels hold data (satsynth.raster.valid_mask), the same in every stage: a
pixel where one band of a multi-band image is nodata is not trained on by prepare, is nodata in
predict's output and is not counted by evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import T_UTM, TABLE, brightness_image, make_model
from rasters import write_raster

from satsynth.data.classes import IGNORE_INDEX
from satsynth.data.prepare import prepare_dataset
from satsynth.data.store import ChipStore
from satsynth.predict.evaluate import evaluate
from satsynth.predict.predict import predict_raster
from satsynth.raster import open_raster, valid_mask

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 64
#: (row, col) of pixels where only band 2 is nodata, and of one where every band is
PARTIAL = [(10, 12), (40, 7), (33, 50)]
ALL = (20, 20)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 3-band uint8 image (nodata 0 on every band) with band 2 missing at PARTIAL and all
    bands missing at ALL, its class-id labels (every pixel labeled) and a fitted model."""
    d = tmp_path_factory.mktemp("nodata")
    img, idx = brightness_image(H, W, seed=3)
    model, _ = make_model(d / "seg", encoder="w4d0", fit_to=(img, idx))
    img = img.copy()
    for r, c in PARTIAL:
        img[1, r, c] = 0
    img[:, ALL[0], ALL[1]] = 0
    ids = TABLE.index_to_id_lut()[idx][None]
    return {"dir": d, "model": model, "labels": write_raster(d / "lab.tif", ids, transform=T_UTM),
            "image": write_raster(d / "img.tif", img, nodata=0, transform=T_UTM)}


def test_the_raster_layer_rule_any_band_without_data(scene):
    with open_raster(scene["image"], "image") as src:
        data = src.read()
        valid = valid_mask(src, scene["image"], data, [1, 2, 3], None)
    assert valid is not None and valid.shape == (H, W)
    assert [bool(valid[r, c]) for r, c in [*PARTIAL, ALL]] == [False] * 4
    assert int((~valid).sum()) == len(PARTIAL) + 1


def test_prepare_predict_and_evaluate_agree(scene, tmp_path):
    holes = [*PARTIAL, ALL]
    # prepare: one chip covering the image; the pixels without data are not trained on
    store = ChipStore(prepare_dataset(tmp_path / "ds", images=[scene["image"]],
                                      labels=[scene["labels"]], chip_size=H, val_fraction=0.0,
                                      min_labeled=0.1))
    labels = np.asarray(store.split("train").labels)
    assert labels.shape == (1, H, W)
    assert [int(labels[0, r, c]) for r, c in holes] == [IGNORE_INDEX] * len(holes)
    assert int((labels[0] == IGNORE_INDEX).sum()) == len(holes)
    # predict: nodata (255) exactly there
    out = tmp_path / "pred.tif"
    predict_raster(scene["model"], scene["image"], out, device="cpu")
    with open_raster(out, "prediction") as p:
        pred = p.read(1)
    assert [int(pred[r, c]) for r, c in holes] == [255] * len(holes)
    assert int((pred == 255).sum()) == len(holes)
    # evaluate: every labeled pixel is counted but those
    res = evaluate(scene["model"], tmp_path / "rep", image=scene["image"],
                   labels=scene["labels"], device="cpu")
    rep = json.loads(open(res["report_json"]).read())
    assert rep["pixels"] == H * W - len(holes)
