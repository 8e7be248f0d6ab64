"""Small inputs the tests of several stages build, in one place (tests/engine is on sys.path
through its conftest, so every test folder imports them as ``from builders import ...``):

- a brightness-separable chip store (:func:`make_store`): the segmenter, scoring, protocol and
  distributed tests train on it;
- a tiny segmenter folder (:func:`make_model`) and the brightness scene it separates
  (:func:`brightness_image`) on the UTM grid :data:`T_UTM`: the predict, ONNX, nodata-rule,
  distributed and pretrained-encoder tests run it;
- the tiny generator's settings (:data:`TINY_GENERATOR`) and the environment of subprocesses
  that run tiny models (:data:`ENV`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from satsynth.checkpoint import save_model_dir
from satsynth.data.classes import ClassInfo, ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipStoreWriter, StoreMeta
from satsynth.segmenter.model import SegmenterConfig, build_segmenter

#: Subprocesses run tiny models: one thread avoids thread contention on a busy CPU.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: The tiny generator (seconds per step on a CPU).
TINY_GENERATOR = {"block_widths": [16, 32], "batch_size": 8, "device": "cpu",
                  "checkpoint_every": 10_000}

# --- a brightness-separable chip store -----------------------------------------------------------

LEVELS = (40, 128, 215)  # class index -> image brightness
SIZE = 32


def class_table(names=("water", "road", "building")) -> ClassTable:
    """Classes with ids 10, 11, ... named ``names``."""
    return ClassTable([ClassInfo(10 + i, n, (40 * i, 80, 120)) for i, n in enumerate(names)])


def random_labels(rng: np.random.Generator, k: int, size: int = SIZE) -> np.ndarray:
    """A chip of class indices below ``k``: a background class and four rectangles."""
    lab = np.full((size, size), rng.integers(0, k), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(4, size // 2, 2)
        lab[y:y + h, x:x + w] = rng.integers(0, k)
    return lab


def level_image(lab: np.ndarray, rng: np.random.Generator, bands: int = 1) -> np.ndarray:
    """The uint8 image of a chip of class indices: brightness LEVELS[i] plus noise."""
    img = np.asarray(LEVELS, float)[np.minimum(lab, 2)][None].repeat(bands, 0)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def make_store(path, n_train=64, n_val=16, bands=1, table=None, synthetic=False, seed=0,
               size=SIZE, fill=None):
    """A brightness-separable store: class index i has brightness LEVELS[i]. ``fill`` sets every
    image pixel to one value (to recognise where a chip came from)."""
    rng = np.random.default_rng(seed)
    table = table or class_table()
    meta = StoreMeta(classes=table, bands=bands, dtype="uint8", chip_size=size,
                     normalizer=Normalizer([0.0] * bands, [255.0] * bands, "uint8"),
                     crs="EPSG:32640", pixel_size=(0.5, 0.5), sources=[{"image": "scene.tif"}],
                     synthetic=synthetic)
    splits = {"train": n_train} if synthetic else {"train": n_train, "val": n_val}
    with ChipStoreWriter(path, meta, splits, write_index=False) as w:
        for split, n in splits.items():
            for _ in range(n):
                lab = random_labels(rng, table.num_classes, size)
                img = level_image(lab, rng, bands)
                if fill is not None:
                    img[:] = fill
                w.add(split, img, lab, (0.5, 0, 500000, 0, -0.5, 2700000))
    return path


# --- a tiny segmenter and the scene it separates ---------------------------------------------------

TABLE = ClassTable.from_dict([{"id": 1, "name": "water", "color": "#1f4e9c"},
                              {"id": 5, "name": "land", "color": "#c8b27a"},
                              {"id": 9, "name": "roof & tower", "color": "#d62728"}])
UTM = "EPSG:32640"
T_UTM = from_origin(500000.0, 2800000.0, 0.5, 0.5)


def make_model(path: Path, *, bands: int = 3, encoder: str = "w8d2", table: ClassTable = TABLE,
               low: float = 0.0, high: float = 255.0, dtype: str = "uint8",
               crs: str | None = UTM, pixel_size: float | None = 0.5, seed: int = 0,
               fit_to: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Path, object]:
    """Save a tiny fully convolutional segmenter; with ``fit_to=(image, class_indices)`` it is
    first fitted for a few steps so that its classes mean something."""
    import torch

    torch.manual_seed(seed)
    cfg = SegmenterConfig(arch="tiny", encoder=encoder, in_channels=bands,
                          classes=table,
                          normalization=Normalizer([low] * bands, [high] * bands, dtype),
                          crs=crs, pixel_size=[pixel_size, pixel_size] if pixel_size else None)
    model = build_segmenter(cfg)
    if fit_to is not None:
        x = torch.from_numpy(cfg.normalization.to_model(fit_to[0])[None])
        y = torch.from_numpy(fit_to[1][None].astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model.train()
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    save_model_dir(path, kind="segmenter", config=cfg.to_dict(),
                   tensors={"model": model.state_dict()})
    return path, model


def brightness_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 3-band uint8 scene of dark / mid / bright regions and its class indices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = (np.sin(xx / 37.0 + rng.uniform(0, 6)) + np.cos(yy / 23.0 + rng.uniform(0, 6))
             + 0.5 * np.sin((xx + yy) / 51.0))
    idx = np.digitize(field, [-0.6, 0.6]).astype(np.uint8)  # 0 dark, 1 mid, 2 bright
    levels = np.array([30, 120, 220], dtype=np.float32)[idx]
    img = levels[None] + rng.normal(0, 8, (3, h, w)).astype(np.float32)
    img[1] *= 0.9
    return np.clip(img, 1, 255).astype(np.uint8), idx


def assert_resumed_like_uninterrupted(full: dict, resumed: dict, load, full_dir: Path,
                                      resumed_dir: Path) -> None:
    """A run stopped and resumed logged the same losses and ended with the same weights as one
    that ran without stopping (``full``/``resumed``: the training results; ``load``: the model
    loader, e.g. ``load_generator``)."""
    import torch

    a = [float(r.split(",")[1]) for r in Path(full["log"]).read_text().splitlines()[1:]]
    b = [float(r.split(",")[1]) for r in Path(resumed["log"]).read_text().splitlines()[1:]]
    np.testing.assert_allclose(a, b, rtol=1e-4)
    wa = load(full_dir, weights="model")[0].state_dict()
    wb = load(resumed_dir, weights="model")[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def stand_in_generator(tmp_path: Path, monkeypatch) -> Path:
    """A generator folder and a test double of the experiment's sampler writing a small synthetic
    store (for experiment tests that need pools, not a trained generator)."""
    import satsynth.workflows.experiment as exp_mod

    gen = tmp_path / "gen"
    gen.mkdir(exist_ok=True)
    (gen / "config.json").write_text('{"kind": "generator"}')

    def synthesize(model_dir, count, out, **kw):
        make_store(out, n_train=count, synthetic=True, seed=kw["seed"])
        return {"synthetic": str(out)}

    monkeypatch.setattr(exp_mod, "synthesize", synthesize)
    return gen
