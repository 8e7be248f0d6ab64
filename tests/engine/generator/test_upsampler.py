"""The super-resolution cascade: train-generator --size, train-upsampler, synthesize --upsampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from builders import TINY_GENERATOR, assert_resumed_like_uninterrupted

from satsynth.data.classes import ClassTable
from satsynth.data.normalize import Normalizer
from satsynth.data.store import ChipStore, ChipStoreWriter, StoreMeta
from satsynth.errors import SatSynthError
from satsynth.generator.model import load_generator
from satsynth.generator.resample import downsample_image, downsample_mask, downsample_pair
from satsynth.generator.sample import synthesize, upsample_pairs
from satsynth.generator.train import run_training
from satsynth.generator.upsampler import (
    condition_input,
    load_upsampler,
    run_upsampler_training,
    training_inputs,
)

S = 16  # chip size: 4 x 4 blocks of 4 px, each one class
BASE = 8
IDS = [10, 20, 30]
ORIGIN = (300_000.0, 2_800_000.0)
PX = 0.5
NORM = Normalizer([1000, 1000], [3000, 3000], "uint16")
TINY = TINY_GENERATOR


pytestmark = pytest.mark.usefixtures("one_thread")


def _chips(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random layouts of 4 px class blocks (2 px at the base size, where downsampling blurs
    the image's edges between blocks)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lab = np.kron(rng.integers(0, 3, (4, 4)), np.ones((4, 4), int)).astype(np.uint8)
        li = lab.astype(np.int32)
        img = np.stack([1200 + 700 * li, 2800 - 600 * li]).astype(np.uint16)
        out.append((img, lab))
    return out


def _store(path: Path, chips: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    meta = StoreMeta(classes=ClassTable.from_values(IDS), bands=2, dtype="uint16", chip_size=S,
                     normalizer=NORM, crs="EPSG:32640", pixel_size=(PX, PX),
                     sources=[{"image": "scene.tif"}])
    with ChipStoreWriter(path, meta, {"train": len(chips)}) as w:
        for i, (im, lb) in enumerate(chips):
            w.add("train", im, lb, (PX, 0, ORIGIN[0] + S * PX * i, 0, -PX, ORIGIN[1]))
    return path


def _model_space(chips: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(NORM.to_model(np.stack([c[0] for c in chips])))
    lab = torch.from_numpy(np.stack([c[1] for c in chips]).astype(np.int64))
    return img, lab


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An 8 -> 16 px upsampler trained briefly on eight chips."""
    root = tmp_path_factory.mktemp("sr")
    chips = _chips(8)
    ds = _store(root / "ds", chips)
    res = run_upsampler_training(ds, root / "sr", BASE, 2, steps=160, lr=3e-3, warmup=10,
                                 **TINY)
    return {"root": root, "ds": ds, "chips": chips, "train": res}


def _upsample(model_dir: Path, chips, perm=None, seed=0):
    model, cfg = load_upsampler(model_dir)
    img, lab = _model_space(chips)
    low_img, low_lab = downsample_pair(img, lab, BASE, 3)
    if perm is not None:
        low_img, low_lab = low_img[perm], low_lab[perm]
    return upsample_pairs(model, cfg, cfg, low_img.numpy(), low_lab.numpy(), sampler="dpm",
                          steps=20, seed=seed)


# --- resampling ------------------------------------------------------------------------------------
def test_downsampling_averages_images_and_keeps_the_majority_class_of_labelled_pixels():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(downsample_image(img, 2)[0, 0],
                               torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    mask = torch.tensor([[[0, 1, 2, 2],
                          [1, 1, 2, 255],
                          [255, 255, 0, 1],
                          [255, 255, 1, 0]]])
    # block 1: three 1s; block 2: 2 beats the ignored pixel; block 3: all ignored; block 4: a
    # tie of 0 and 1 goes to the lower class index
    assert downsample_mask(mask, 2, 3).tolist() == [[[1, 2], [255, 0]]]
    assert downsample_mask(mask, 4, 3) is mask
    with pytest.raises(SatSynthError, match="must divide the 4 px chips"):
        downsample_mask(mask, 3, 3)


def test_upsampler_unet_takes_the_noisy_pair_and_the_upsampled_condition(trained):
    model, cfg = load_upsampler(trained["train"]["model"])
    assert (cfg.chip_size, cfg.base_size, cfg.factor, cfg.condition) == (S, BASE, 2, "none")
    assert cfg.channels == 2 + 2  # two bands + two analog bits for three classes
    assert model.config.in_channels == 2 * cfg.channels
    assert model.config.out_channels == cfg.channels
    img, lab = _model_space(trained["chips"][:3])
    target, target_lab, cond = training_inputs(cfg, img, lab)
    assert target.shape == (3, 2, S, S) and target_lab.shape == (3, S, S)
    assert cond.shape == (3, cfg.channels, S, S)
    # the condition is the low-resolution pair: area-averaged image, blocky mask code
    low_img, low_lab = downsample_pair(img, lab, BASE, 3)
    torch.testing.assert_close(cond, condition_input(cfg, low_img, low_lab))
    out = model(torch.cat([target_lab.new_zeros(3, cfg.channels, S, S).float(), cond], 1),
                torch.tensor([10, 10, 10])).sample
    assert out.shape == (3, cfg.channels, S, S)
    json_cfg = json.loads((trained["train"]["model"] / "config.json").read_text())
    assert json_cfg["kind"] == "upsampler" and json_cfg["base_size"] == BASE
    with pytest.raises(SatSynthError, match="upsampler model folder, a generator is needed"):
        load_generator(trained["train"]["model"])


def test_upsampler_follows_its_condition_not_a_shuffled_one(trained):
    """Given each chip's low-resolution pair, the samples reproduce that chip's mask; given
    another chip's, they do not (so the condition is used, not memorized chips)."""
    chips = trained["chips"]
    real = np.stack([c[1] for c in chips])
    perm = np.roll(np.arange(len(chips)), 1)
    _, labs, _, _ = _upsample(trained["train"]["model"], chips)
    _, shuffled, _, _ = _upsample(trained["train"]["model"], chips, perm)
    acc = float((labs == real).mean())
    acc_shuffled = float((shuffled == real).mean())
    assert acc > 0.9, acc
    assert acc - acc_shuffled > 0.4, (acc, acc_shuffled)
    assert float((shuffled == real[perm]).mean()) > 0.9  # it follows what it is given


def test_overfit_upsampler_reproduces_its_chips_with_sharper_edges_than_bilinear(trained):
    """Trained on a handful of chips, it draws each chip back from its low-resolution pair: the
    mask, the image (closer to its own chip than to the others), and the class edges, which the
    bilinear upsampling of the low-resolution image blurs."""
    chips = trained["chips"]
    img, _ = _model_space(chips)
    real = np.stack([c[1] for c in chips])
    imgs, labs, _, _ = _upsample(trained["train"]["model"], chips)
    decided = labs != 255  # undecided analog bits are written as ignore (generator.encoding)
    assert float(decided.mean()) > 0.85
    assert float((labs == real)[decided].mean()) > 0.95
    own = float(((torch.from_numpy(imgs) - img) ** 2).mean())
    others = float(((torch.from_numpy(imgs) - img[np.roll(np.arange(len(chips)), 1)]) ** 2).mean())
    assert own < 0.3 * others, (own, others)
    bilinear = torch.nn.functional.interpolate(downsample_image(img, BASE), size=(S, S),
                                               mode="bilinear", align_corners=False)
    steps = np.diff(img[:, 0].numpy(), axis=-1)
    edges = np.abs(steps) > 0.2  # between blocks of different classes
    err = np.abs(np.diff(imgs[:, 0], axis=-1) - steps)[edges].mean()
    err_bilinear = np.abs(np.diff(bilinear[:, 0].numpy(), axis=-1) - steps)[edges].mean()
    assert err < 0.6 * err_bilinear, (err, err_bilinear)


def test_upsampler_resumes_on_the_same_loss_curve_and_keeps_its_geometry(tmp_path, monkeypatch,
                                                                           cancel_after):
    ds = _store(tmp_path / "ds", _chips(4, seed=1))
    opts = dict(TINY, block_widths=[8, 16], batch_size=4, warmup=2)
    full = run_upsampler_training(ds, tmp_path / "full", BASE, 2, steps=6, **opts)
    # stopped after 3 steps by the cancel flag (as Ctrl-C or QGIS's cancel), then resumed
    cancel_after(3)
    stopped = run_upsampler_training(ds, tmp_path / "run", BASE, 2, steps=6, **opts)
    monkeypatch.undo()
    assert stopped["interrupted"] and stopped["steps"] == 3
    res = run_upsampler_training(ds, tmp_path / "run", BASE, 2, steps=6, resume=True, **opts)
    assert res["steps"] == 6
    assert_resumed_like_uninterrupted(full, res, load_upsampler, tmp_path / "full", tmp_path / "run")
    with pytest.raises(SatSynthError, match="goes from 8 px by 2x, not from 8 px by 4x"):
        run_upsampler_training(ds, tmp_path / "run", BASE, 4, steps=7, resume=True, **opts)
    with pytest.raises(SatSynthError, match="--base-size 16 x --factor 2 = 32 px must divide"):
        run_upsampler_training(ds, tmp_path / "big", 16, 2, steps=1, **opts)
    run_training(ds, tmp_path / "gen", steps=1, **opts)
    with pytest.raises(SatSynthError, match="is a generator model folder, not an? upsampler"):
        run_upsampler_training(ds, tmp_path / "gen", BASE, 2, steps=1, **opts)


def test_base_at_low_resolution_plus_upsampler_writes_georeferenced_pairs_at_full_size(
        trained, tmp_path):
    ds = trained["ds"]
    base = run_training(ds, tmp_path / "base", size=BASE, steps=3, condition="class-shares",
                        **TINY)["model"]
    _, cfg = load_generator(base)
    assert (cfg.chip_size, cfg.source_chip_size, cfg.pixel_size) == (BASE, S, [2 * PX, 2 * PX])
    # the base alone: 8 px chips covering the same ground (pixel size doubled)
    low = synthesize(base, 3, tmp_path / "low", steps=4, device="cpu")
    with rasterio.open(Path(low["synthetic"]) / "images" / "syn_00000.tif") as src:
        assert src.shape == (BASE, BASE) and src.res == (2 * PX, 2 * PX)
    # the cascade: 16 px chips at the training chips' pixel size, beside the source extent
    syn = synthesize(base, 5, tmp_path / "syn", steps=4, device="cpu", batch_size=2,
                     upsampler=trained["train"]["model"])
    out = Path(syn["synthetic"])
    store = ChipStore(out)
    assert store.meta.chip_size == S and store.meta.pixel_size == (PX, PX)
    assert store.split("train").labels.shape == (5, S, S)
    report = json.loads((out / "report.json").read_text())
    assert report["chip_size"] == S and report["upsampler"]["factor"] == 2
    assert report["unet_evals_per_pair"] == 8  # 4 base steps + 4 upsampler steps
    xs = []
    for name in ("images", "labels"):
        with rasterio.open(out / name / "syn_00001.tif") as src:
            assert src.shape == (S, S) and src.res == (PX, PX)
            assert src.crs.to_epsg() == 32640
            assert src.tags()["SATSYNTH_UPSAMPLER_ID"].startswith("sr-")
            xs.append(src.transform.c)
    assert xs[0] == xs[1] > ORIGIN[0] + 8 * S * PX  # right of the 8 training chips
    with rasterio.open(out / "images.vrt") as vrt:
        assert vrt.res == (PX, PX) and vrt.crs.to_epsg() == 32640 and vrt.width == 3 * S
    # a base that does not make the upsampler's input size is refused with the fix
    full = run_training(ds, tmp_path / "full", steps=1, condition="none", **TINY)["model"]
    with pytest.raises(SatSynthError, match="takes 8 px pairs, the generator makes 16 px pairs "
                                            r"\(train the generator with --size 8\)"):
        synthesize(full, 1, tmp_path / "bad", device="cpu", upsampler=trained["train"]["model"])
    assert not (tmp_path / "bad").exists()


def test_cli_trains_an_upsampler_and_a_low_resolution_base(tmp_path):
    from satsynth.cli import main

    ds = _store(tmp_path / "ds", _chips(2))
    assert main(["train-upsampler", str(ds), "--out", str(tmp_path / "sr"), "--base-size", "8",
                 "--factor", "2", "--steps", "2", "--batch-size", "2", "--block-widths", "8,16",
                 "--device", "cpu", "--progress", "quiet"]) == 0
    cfg = json.loads((tmp_path / "sr" / "config.json").read_text())
    assert (cfg["kind"], cfg["chip_size"], cfg["base_size"], cfg["step"]) == ("upsampler", 16, 8, 2)
    assert main(["train-generator", str(ds), "--out", str(tmp_path / "g"), "--size", "8",
                 "--steps", "1", "--batch-size", "2", "--block-widths", "8,16", "--device", "cpu",
                 "--progress", "quiet"]) == 0
    assert json.loads((tmp_path / "g" / "config.json").read_text())["chip_size"] == 8
    assert main(["synthesize", str(tmp_path / "g"), "--upsampler", str(tmp_path / "sr"),
                 "--count", "2", "--steps", "2", "--out", str(tmp_path / "syn"), "--device",
                 "cpu", "--progress", "quiet"]) == 0
    assert ChipStore(tmp_path / "syn").meta.chip_size == 16
    assert main(["train-generator", str(ds), "--out", str(tmp_path / "x"), "--size", "5",
                 "--steps", "1", "--progress", "quiet"]) == 2
    assert main(["train-upsampler", str(ds), "--out", str(tmp_path / "y"), "--base-size", "3",
                 "--factor", "4", "--progress", "quiet"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()



def test_conditioning_augmentation_noises_the_low_resolution_image_only(trained, tmp_path):
    """--cond-noise: in training the low-resolution image gets Gaussian noise of a level drawn per
    chip from U(0, SIGMA), the label code stays as it is, a batch's stream makes it reproducible,
    and the level is saved with the upsampler."""
    from dataclasses import replace

    from satsynth.cli import build_parser

    _, cfg = load_upsampler(trained["train"]["model"])
    assert cfg.cond_noise == 0.0  # off by default
    img, lab = _model_space(trained["chips"][:6])
    clean = training_inputs(cfg, img, lab, torch.Generator().manual_seed(1))[2]
    noisy_cfg = replace(cfg, cond_noise=0.3)
    a = training_inputs(noisy_cfg, img, lab, torch.Generator().manual_seed(1))
    b = training_inputs(noisy_cfg, img, lab, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[2], b[2])  # the same stream, the same noise
    torch.testing.assert_close(a[0], training_inputs(cfg, img, lab)[0])  # targets untouched
    diff = a[2] - clean
    assert torch.equal(diff[:, 2:], torch.zeros_like(diff[:, 2:]))  # label code: no noise
    per_chip = diff[:, :2].std((1, 2, 3))
    assert per_chip.max() > 0.02 and per_chip.max() < 0.3  # levels up to 0.3, bilinear-smoothed
    assert per_chip.std() > 0.005  # a level of its own per chip
    assert a[2][:, :2].abs().max() <= 1.0
    ds = trained["ds"]
    res = run_upsampler_training(ds, tmp_path / "sr", BASE, 2, cond_noise=0.25, steps=2,
                                 **TINY)
    assert load_upsampler(res["model"])[1].cond_noise == 0.25
    with pytest.raises(SatSynthError, match="--cond-noise"):
        run_upsampler_training(ds, tmp_path / "sr2", BASE, 2, cond_noise=2.0, steps=2, **TINY)
    args = build_parser().parse_args(["train-upsampler", "d", "--out", "o", "--base-size", "8",
                                      "--cond-noise", "0.2"])
    assert args.cond_noise == 0.2
