"""Pretrained encoders (``--encoder-weights imagenet`` / ``torchgeo:NAME``): loaded by smp's and
TorchGeo's own code from a cache these tests prepare (nothing is downloaded: the hub is offline),
the one-line refusals, and the input standardization carried to predict and the ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import T_UTM, TABLE, brightness_image, make_store
from rasters import write_raster

from satsynth.checkpoint import save_model_dir
from satsynth.data.normalize import Normalizer
from satsynth.errors import SatSynthError
from satsynth.segmenter.model import SegmenterConfig, build_segmenter, load_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
FMOW = "ResNet50_Weights.FMOW_RGB_GASSL"
#: a standardization that inverts the image (x -> -x), so that leaving it out swaps dark and
#: bright classes
SKEWED = {"weights": "test", "mean": [0.5, 0.5, 0.5], "std": [-0.25, -0.25, -0.25]}


def _cfg(arch: str = "fpn", encoder: str = "resnet18") -> SegmenterConfig:
    return SegmenterConfig(arch=arch, encoder=encoder, in_channels=3, classes=TABLE,
                           normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"))


def prepare_smp_cache(hf_home: Path, encoder: str = "resnet18", name: str = "imagenet",
                      seed: int = 1) -> dict[str, torch.Tensor]:
    """Write smp's ``name`` weights for ``encoder`` where the Hugging Face hub keeps them
    (``HF_HOME/hub/models--REPO/snapshots/REVISION/``), from a random encoder; returns them."""
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    s = encoders[encoder]["pretrained_settings"][name]
    snap = (hf_home / "hub" / ("models--" + s["repo_id"].replace("/", "--")) / "snapshots"
            / s["revision"])
    snap.mkdir(parents=True)
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in get_encoder(encoder).state_dict().items()}
    state = _randomized(state)  # unlike a fresh encoder's initialization
    save_file(state, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({**IMAGENET, "input_space": "RGB",
                                                  "input_range": [0, 1]}))
    return state


def _randomized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A seeded random encoder's tensors with its batch-norm statistics and affine parameters
    moved off their initial 0 / 1 (so that no tensor equals a fresh encoder's)."""
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and (k.endswith(("running_var", "running_mean"))
                                      or (v.ndim == 1 and not k.startswith("fc"))):
            v = v + 0.1 * torch.rand_like(v) + 0.05
        out[k] = v.contiguous()
    return out


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face / torch hub cache in tmp_path, the network off."""
    from huggingface_hub import constants

    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home, torch_home


def _encoder_equals(model, state: dict[str, torch.Tensor]) -> None:
    own = model.encoder.state_dict()
    assert set(own) <= set(state)
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


def test_imagenet_weights_come_from_smps_cache_offline_with_their_standardization(
        offline_hub):
    hf_home, _ = offline_hub
    state = prepare_smp_cache(hf_home)
    cfg = _cfg()
    model = build_segmenter(cfg, "imagenet").eval()
    _encoder_equals(model, state)
    assert cfg.input_standardization == {"weights": "imagenet", **IMAGENET}
    # the model standardizes its normalized input x itself: ((x + 1) / 2 - mean) / std
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        got = model(x)
        bare = build_segmenter(_cfg()).eval()  # same weights, no standardization
        bare.load_state_dict(model.state_dict())
        want = bare(((x + 1) / 2 - mean) / std)
        assert not torch.allclose(bare(x), want, atol=1e-3)  # the standardization matters
    torch.testing.assert_close(got, want)


def test_named_weights_not_in_the_cache_offline_are_one_line(offline_hub):
    hf_home, _ = offline_hub
    with pytest.raises(SatSynthError) as e:
        build_segmenter(_cfg(), "imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "imagenet" in msg and str(hf_home / "hub") in msg
    assert "satsynth fetch-weights imagenet --encoder resnet18" in msg
    assert "models--smp-hub--resnet18.imagenet" in msg
    with pytest.raises(SatSynthError, match="no such weights for the resnet18 encoder .*imagenet"):
        build_segmenter(_cfg(), "imagenett")
    with pytest.raises(SatSynthError, match="encoder weights file not found"):
        build_segmenter(_cfg(), str(hf_home / "missing.safetensors"))


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satsynth", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          cwd=cwd, timeout=300)


def test_cli_trains_from_cached_imagenet_weights_offline_and_refuses_without_them(tmp_path):
    ds = make_store(tmp_path / "ds", n_train=8, n_val=4, bands=3)
    hf_home = tmp_path / "hf"
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "t")}
    args = ["train-segmenter", str(ds), "--arch", "fpn", "--encoder", "resnet18",
            "--encoder-weights", "imagenet", "--max-steps", "1", "--batch-size", "4",
            "--device", "cpu"]
    # nothing cached: one line, exit 2, no traceback, no output
    r = _cli([*args, "--out", str(tmp_path / "seg0")], env, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "fetch-weights" in ln]
    assert len(lines) == 1 and str(hf_home / "hub") in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "seg0").exists()
    # cached: trains, and the folder records the standardization every reader applies
    prepare_smp_cache(hf_home)
    r = _cli([*args, "--out", str(tmp_path / "seg")], env, tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert cfg["input_standardization"] == {"weights": "imagenet", **IMAGENET}
    model, loaded = load_segmenter(tmp_path / "seg")
    assert loaded.input_standardization == cfg["input_standardization"]
    assert torch.equal(model.satsynth_input_std.flatten(), torch.tensor(IMAGENET["std"]))


def test_training_starts_from_exactly_the_cached_weights(offline_hub, tmp_path, monkeypatch):
    """The encoder a training run starts from is the cached one, tensor for tensor."""
    import satsynth.segmenter.train as train_mod

    hf_home, _ = offline_hub
    state = prepare_smp_cache(hf_home, seed=3)
    ds = make_store(tmp_path / "ds", n_train=8, n_val=4, bands=3)
    built = []
    real_build = train_mod.build_segmenter

    def spy(cfg, weights=None):
        model = real_build(cfg, weights)
        built.append({k: v.clone() for k, v in model.encoder.state_dict().items()})
        return model

    monkeypatch.setattr(train_mod, "build_segmenter", spy)
    train_mod.train_segmenter(ds, tmp_path / "seg", arch="fpn", encoder="resnet18",
                              encoder_weights="imagenet", max_steps=1, batch_size=4,
                              device="cpu")
    assert len(built) == 1
    for k, v in built[0].items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------------------------
# TorchGeo


def prepare_torchgeo_cache(torch_home: Path, name: str = FMOW) -> dict[str, torch.Tensor]:
    """Write TorchGeo's ``name`` checkpoint where torch hub keeps it, from a random timm ResNet
    (TorchGeo's own model for these weights, classifier included); returns it."""
    import timm
    from torchgeo.models import get_weight

    w = get_weight(name)
    net = timm.create_model(w.meta["model"], in_chans=w.meta["in_chans"])
    torch.manual_seed(5)
    state = _randomized(net.state_dict())
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / os.path.basename(w.url))
    return state


def test_torchgeo_rgb_weights_load_offline_with_their_own_transforms(offline_hub):
    pytest.importorskip("torchgeo", reason="TorchGeo is an optional extra (satsynth[torchgeo])")
    _, torch_home = offline_hub
    cfg = _cfg("fpn", "resnet50")
    with pytest.raises(SatSynthError) as e:  # nothing cached yet
        build_segmenter(cfg, f"torchgeo:{FMOW}")
    assert "resnet50_fmow_rgb_gassl-da43d987.pth" in str(e.value)
    assert str(torch_home / "hub" / "checkpoints") in str(e.value)
    state = prepare_torchgeo_cache(torch_home)
    model = build_segmenter(cfg, f"torchgeo:{FMOW}")
    _encoder_equals(model, state)
    # its transforms: x / 255, then ImageNet's mean and std
    assert cfg.input_standardization["weights"] == f"torchgeo:{FMOW}"
    np.testing.assert_allclose(cfg.input_standardization["mean"], IMAGENET["mean"])
    np.testing.assert_allclose(cfg.input_standardization["std"], IMAGENET["std"])


@pytest.mark.parametrize("name, encoder, words", [
    ("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18", "expect 13 bands"),
    ("ResNet50_Weights.SENTINEL1_ALL_MOCO", "resnet50", "expect 2 bands (VV, VH)"),
    ("ResNet18_Weights.SENTINEL2_RGB_MOCO", "resnet18", "another scale than 8-bit RGB"),
    (FMOW, "resnet18", "train with --encoder resnet50"),
    ("NoSuch_Weights.X", "resnet18", "TorchGeo has no such weights"),
])
def test_torchgeo_weights_that_do_not_fit_are_refused_in_one_line(offline_hub, name, encoder,
                                                                   words):
    pytest.importorskip("torchgeo", reason="TorchGeo is an optional extra (satsynth[torchgeo])")
    with pytest.raises(SatSynthError) as e:
        build_segmenter(_cfg("fpn", encoder), f"torchgeo:{name}")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_named_weights_need_three_bands(offline_hub):
    cfg = SegmenterConfig(arch="fpn", encoder="resnet18", in_channels=4, classes=TABLE,
                          normalization=Normalizer([0.0] * 4, [255.0] * 4, "uint8"))
    with pytest.raises(SatSynthError, match="for 3 RGB bands; this dataset has 4"):
        build_segmenter(cfg, "imagenet")


# --------------------------------------------------------------------------------------------
# the standardization reaches every reader


def _standardized_model(path: Path, img: np.ndarray, idx: np.ndarray) -> Path:
    """A tiny segmenter fitted (a few steps) with a standardization far from identity."""
    cfg = SegmenterConfig(arch="tiny", encoder="w8d2", in_channels=3, classes=TABLE,
                          normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"),
                          crs="EPSG:32640", pixel_size=[0.5, 0.5],
                          input_standardization=SKEWED)
    torch.manual_seed(0)
    model = build_segmenter(cfg)
    x = torch.from_numpy(cfg.normalization.to_model(img)[None])
    y = torch.from_numpy(idx[None].astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save_model_dir(path, kind="segmenter", config=cfg.to_dict(),
                   tensors={"model": model.eval().state_dict()})
    return path


def test_standardization_is_carried_into_predict_and_the_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    import rasterio

    from satsynth.predict.export import export_segmenter
    from satsynth.predict.predict import predict_raster

    img, idx = brightness_image(96, 96, seed=2)
    image = write_raster(tmp_path / "scene.tif", img, transform=T_UTM)
    mdir = _standardized_model(tmp_path / "seg", img, idx)
    model, cfg = load_segmenter(mdir)
    x = torch.from_numpy(cfg.normalization.to_model(img)[None])
    with torch.no_grad():
        want = model(x).argmax(1)[0].numpy()
        stripped = json.loads((mdir / "config.json").read_text())
        stripped.pop("input_standardization")  # the same weights read as an older folder would
        bare_cfg = SegmenterConfig.from_dict(stripped)
        assert bare_cfg.input_standardization is None
        bare = build_segmenter(bare_cfg)
        bare.load_state_dict(model.state_dict())
        unstd = bare(x).argmax(1)[0].numpy()
    assert (want != unstd).mean() > 0.3  # without the standardization: other classes
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"pred_{runtime}.tif"
        predict_raster(mdir, image, out, tile=64, overlap=16, device="cpu", runtime=runtime)
        with rasterio.open(out) as ds:
            got = ds.read(1)
        ids = np.asarray([c.id for c in TABLE.classes])
        assert (got == ids[want]).mean() > 0.999, runtime

    onnx_path = tmp_path / "seg.onnx"
    export_segmenter(mdir, onnx_path, tile=64, overlap=16)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    assert meta["satsynth_input_standardization"] == SKEWED
    assert meta["seg_small_segment"] == 0
    # Deepness: x / 255, (x - mean) / std from the metadata, then the graph: the torch model's
    # classes on the standardized input
    tile = img[:, :64, :64].astype(np.float32)
    m = np.asarray(meta["standardization_mean"], np.float32)[:, None, None]
    s = np.asarray(meta["standardization_std"], np.float32)[:, None, None]
    probs = sess.run(None, {sess.get_inputs()[0].name: ((tile / 255 - m) / s)[None]})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(cfg.normalization.to_model(img[:, :64, :64])[None]))
    np.testing.assert_allclose(probs, torch.softmax(ref, 1).numpy(), atol=1e-4)


def test_older_model_folders_without_the_field_predict_as_before(tmp_path):
    from builders import make_model

    mdir, model = make_model(tmp_path / "seg")
    cfg = json.loads((mdir / "config.json").read_text())
    cfg.pop("input_standardization", None)
    (mdir / "config.json").write_text(json.dumps(cfg))
    loaded, lcfg = load_segmenter(mdir)
    assert lcfg.input_standardization is None
    assert not hasattr(loaded, "satsynth_input_mean")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
