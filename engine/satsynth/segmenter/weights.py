"""Pretrained encoder weights: the names segmentation-models-pytorch knows for an encoder
(``imagenet``, ``ssl``, ...), TorchGeo's remote-sensing weights (``torchgeo:<WeightsEnum name>``,
RGB ResNets) and a local file, and the input standardization each expects.

Named weights are loaded by the libraries' own code into their standard caches: smp through the
Hugging Face hub (``$HF_HOME/hub``), TorchGeo through torch hub (``$TORCH_HOME/hub/checkpoints``).
Once cached they load offline; a name that is not cached on a machine that cannot download it is
one :class:`SatSynthError` line naming the weights, the cache folder and how to fetch them
elsewhere (``satsynth fetch-weights``) and copy them over.

The standardization (``SegmenterConfig.input_standardization``) is what the weights were trained
on, per band, on the image as the dataset's normalization stretches it to 0..1:
``model input = (s - mean) / std`` with ``s = (Normalizer.to_model(x) + 1) / 2``. The model applies
it itself (:func:`apply_input_standardization`), so training, predict, evaluate, scoring, the
experiment and the ONNX export all see inputs scaled exactly alike.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satsynth.contract import TORCHGEO_PREFIX
from satsynth.errors import SatSynthError

#: Band names that mean red, green, blue (in this order) in TorchGeo's weights metadata.
RGB_BANDS = (("B4", "B3", "B2"), ("B04", "B03", "B02"), ("R", "G", "B"))
#: What SatSynth's normalization stretches to 0..1 stands for on the 8-bit scale TorchGeo's RGB
#: transforms start from.
EIGHT_BIT = 255.0


@dataclass(frozen=True)
class WeightsSpec:
    """What ``--encoder-weights`` names: ``kind`` is ``file``, ``smp`` or ``torchgeo``."""

    kind: str
    name: str

    @property
    def label(self) -> str:
        return self.name if self.kind != "torchgeo" else TORCHGEO_PREFIX + self.name


def parse_weights(value: str | os.PathLike[str] | None, encoder: str) -> WeightsSpec | None:
    """``--encoder-weights``: None or '' (random), ``torchgeo:NAME``, a name smp knows for
    ``encoder``, or a local file (anything else)."""
    if value is None or str(value).strip() in ("", "none", "None"):
        return None
    text = str(value).strip()
    if text.startswith(TORCHGEO_PREFIX):
        return WeightsSpec("torchgeo", text[len(TORCHGEO_PREFIX):])
    if text in smp_weight_names(encoder) or (
            not Path(text).exists() and text.isidentifier() and text.islower()):
        return WeightsSpec("smp", text)
    return WeightsSpec("file", text)


def smp_weight_names(encoder: str) -> list[str]:
    """The pretrained weight names smp knows for ``encoder`` (empty for unknown encoders)."""
    from segmentation_models_pytorch.encoders import encoders

    return list(encoders.get(encoder, {}).get("pretrained_settings", {}))


def _smp_settings(encoder: str, name: str) -> dict[str, Any]:
    names = smp_weight_names(encoder)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise SatSynthError(f"--encoder-weights {name}: segmentation-models-pytorch has no such "
                            f"weights for the {encoder} encoder (it has: {known}; or give "
                            "torchgeo:NAME or a local file)")
    from segmentation_models_pytorch.encoders import encoders

    return dict(encoders[encoder]["pretrained_settings"][name])


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _not_cached(label: str, encoder: str, where: str, cache: str) -> SatSynthError:
    return SatSynthError(
        f"encoder weights {label} for {encoder} are not in the cache {cache} and cannot be "
        f"downloaded here: run `satsynth fetch-weights {label} --encoder {encoder}` on a machine "
        f"with internet access, then copy the {where} from its cache into {cache} here")


def load_smp_weights(model: Any, encoder: str, name: str) -> dict[str, Any]:
    """Load smp's ``name`` weights into ``model.encoder`` through smp's own loading code (the
    Hugging Face hub cache); returns the standardization they expect."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError
    from segmentation_models_pytorch.encoders import get_encoder, get_preprocessing_params

    s = _smp_settings(encoder, name)
    repo, rev = s["repo_id"], s["revision"]
    folder = "models--" + repo.replace("/", "--")
    cached = isinstance(try_to_load_from_cache(repo, "model.safetensors", revision=rev), str)
    if not cached and _offline():
        raise _not_cached(name, encoder, f"folder {folder}", _hf_cache())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = get_encoder(encoder, in_channels=3, depth=model.encoder._depth,
                              weights=name, output_stride=getattr(model.encoder,
                                                                  "_output_stride", 32))
            params = get_preprocessing_params(encoder, pretrained=name)
    except (LocalEntryNotFoundError, OSError) as exc:
        if isinstance(exc, LocalEntryNotFoundError) or not cached:
            raise _not_cached(name, encoder, f"folder {folder}", _hf_cache()) from None
        raise SatSynthError(f"cannot read the cached encoder weights {name} for {encoder} "
                            f"({str(exc).splitlines()[0][:200]})", _hf_cache()) from None
    state = enc.state_dict()
    _load_into(model, state, name)
    if params.get("input_space", "RGB") != "RGB":
        raise SatSynthError(f"encoder weights {name} for {encoder} expect "
                            f"{params['input_space']} input; SatSynth feeds RGB bands")
    scale = float(max(params.get("input_range") or [0, 1]))
    return {"weights": name, "mean": [float(m) / scale for m in params["mean"]],
            "std": [float(v) / scale for v in params["std"]]}


def _load_into(model: Any, state: dict[str, Any], label: str) -> None:
    """Every tensor of ``model.encoder`` from ``state`` (extra keys such as a classifier's are
    ignored); one line when anything is missing or misshapen."""
    own = model.encoder.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing
                else f"{bad[0]} is {tuple(state[bad[0]].shape)}, not {tuple(own[bad[0]].shape)}")
        raise SatSynthError(f"encoder weights {label} do not fit this encoder: {what}")
    model.encoder.load_state_dict({k: state[k] for k in own}, strict=True)


def apply_input_standardization(model: Any, standardization: dict[str, Any] | None) -> None:
    """Make ``model`` standardize its input as its pretrained weights expect: it receives the
    normalized tiles every reader gives it ([-1, 1]) and computes ``((x + 1) / 2 - mean) / std``
    per band before its first layer (nothing for None: models trained from random weights)."""
    if not standardization:
        return
    import torch

    mean = torch.tensor(standardization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(standardization["std"], dtype=torch.float32).view(1, -1, 1, 1)
    model.register_buffer("satsynth_input_mean", mean, persistent=False)
    model.register_buffer("satsynth_input_std", std, persistent=False)
    model.register_forward_pre_hook(_standardize)


def _standardize(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    mean = module.satsynth_input_mean.to(x.dtype)
    std = module.satsynth_input_std.to(x.dtype)
    return ((x + 1.0) * 0.5 - mean) / std, *args[1:]


def _torchgeo_weights(name: str) -> Any:
    try:
        from torchgeo.models import get_weight
    except ImportError:
        raise SatSynthError(f"--encoder-weights {TORCHGEO_PREFIX}{name} needs TorchGeo, which "
                            "is not installed in the engine's environment: pip install "
                            "'satsynth[torchgeo]' (or pip install torchgeo)") from None
    try:
        return get_weight(name)
    except ValueError:
        raise SatSynthError(f"--encoder-weights {TORCHGEO_PREFIX}{name}: TorchGeo has no such "
                            "weights (give the WeightsEnum name, e.g. "
                            f"{TORCHGEO_PREFIX}ResNet50_Weights.FMOW_RGB_GASSL)") from None


def check_torchgeo_fit(weights: Any, encoder: str, bands: int) -> None:
    """One line when TorchGeo ``weights`` do not fit an ``encoder`` on ``bands`` RGB bands:
    another network, another band count, or bands that are not red, green, blue in order."""
    label = TORCHGEO_PREFIX + str(weights)
    model = str(weights.meta.get("model", ""))
    if model != encoder:
        raise SatSynthError(f"encoder weights {label} are for a {model or 'non-smp'} network, "
                            f"not {encoder}: train with --encoder {model}" if model.startswith(
                                "resnet") else f"encoder weights {label} are for {model or 'an'}"
                            " network SatSynth cannot build; use TorchGeo's ResNet weights")
    chans = int(weights.meta.get("in_chans", 0))
    names = tuple(weights.meta.get("bands") or ())
    if chans != bands or (names and names not in RGB_BANDS):
        got = f"{chans} bands ({', '.join(names)})" if names else f"{chans} bands"
        raise SatSynthError(f"encoder weights {label} expect {got}; this dataset has {bands} "
                            "bands read as red, green, blue: choose RGB weights (e.g. "
                            f"{TORCHGEO_PREFIX}ResNet50_Weights.FMOW_RGB_GASSL)")


def torchgeo_standardization(weights: Any) -> dict[str, Any]:
    """TorchGeo's own transforms for ``weights`` (its Normalize steps, composed into one per-band
    ``(v - mean) / std``), on SatSynth's 0..1 image read as 8-bit values (``v = 255 s``); one
    line for weights whose transforms expect another scale (Sentinel-2 reflectances)."""
    import torch

    mean, std = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for m in weights.transforms.modules():
        if type(m).__name__ != "Normalize":
            continue
        flags = getattr(m, "flags", {}) or {}
        mu = flags.get("mean", getattr(m, "mean", None))
        sd = flags.get("std", getattr(m, "std", None))
        mu = torch.as_tensor(mu, dtype=torch.float64).flatten()
        sd = torch.as_tensor(sd, dtype=torch.float64).flatten()
        mean, std = mean + mu * std, std * sd  # (((v - M) / S) - m) / s = (v - M - m S) / (S s)
    span = EIGHT_BIT / std.expand(3).abs()  # what 0..255 spans after the transforms
    if not bool(((span >= 0.5) & (span <= 20)).all()):
        raise SatSynthError(f"encoder weights {TORCHGEO_PREFIX}{weights} expect values on "
                            "another scale than 8-bit RGB (their transforms map 0..255 to a "
                            f"range of {float(span.min()):.3g}, not about 1: Sentinel-2 "
                            "reflectances); choose weights trained on 8-bit RGB, e.g. "
                            f"{TORCHGEO_PREFIX}ResNet50_Weights.FMOW_RGB_GASSL or "
                            f"{TORCHGEO_PREFIX}ResNet50_Weights.SENTINEL2_SI_RGB_SATLAS")
    return {"weights": TORCHGEO_PREFIX + str(weights),
            "mean": [float(v) / EIGHT_BIT for v in mean.expand(3)],
            "std": [float(v) / EIGHT_BIT for v in std.expand(3)]}


def torchgeo_cache() -> Path:
    """Where torch hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def load_torchgeo_weights(model: Any, encoder: str, name: str, bands: int) -> dict[str, Any]:
    """Load TorchGeo's ``name`` weights into ``model.encoder`` (torch hub's cache, the safe
    loader); returns the standardization their transforms apply."""
    import torch

    weights = _torchgeo_weights(name)
    check_torchgeo_fit(weights, encoder, bands)
    standardization = torchgeo_standardization(weights)
    label, cache = TORCHGEO_PREFIX + str(weights), torchgeo_cache()
    fname = os.path.basename(weights.url.split("?")[0])
    if not (cache / fname).is_file() and _offline():
        raise _not_cached(label, encoder, f"file {fname}", str(cache))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu",
                                                       progress=False, weights_only=True)
    except OSError:  # urllib's URLError is an OSError: no network
        raise _not_cached(label, encoder, f"file {fname}", str(cache)) from None
    except Exception:  # noqa: BLE001 - a damaged or pickled file: never echo torch's advice
        raise SatSynthError(f"cannot read the cached encoder weights {label}: not a state dict "
                            "of tensors (delete it and fetch it again)", cache / fname) from None
    _load_into(model, state, label)
    return standardization


def load_named_weights(model: Any, spec: WeightsSpec, encoder: str, bands: int
                       ) -> dict[str, Any]:
    """Load smp's or TorchGeo's named weights into ``model``'s encoder; returns the
    standardization they expect."""
    if bands != 3:
        raise SatSynthError(f"encoder weights {spec.label} are for 3 RGB bands; this dataset "
                            f"has {bands} (train from random weights or a local file)")
    if spec.kind == "torchgeo":
        return load_torchgeo_weights(model, encoder, spec.name, bands)
    return load_smp_weights(model, encoder, spec.name)


def fetch_weights(value: str, encoder: str) -> dict[str, Any]:
    """``satsynth fetch-weights``: download named weights into their cache (so that training
    later works offline); returns what was fetched and where it is kept."""
    from types import SimpleNamespace

    from segmentation_models_pytorch.encoders import get_encoder

    spec = parse_weights(value, encoder)
    if spec is None or spec.kind == "file":
        raise SatSynthError(f"fetch-weights takes a weights name (imagenet, ...; or "
                            f"{TORCHGEO_PREFIX}NAME), not {value!r}")
    try:
        model = SimpleNamespace(encoder=get_encoder(encoder))
    except KeyError:
        raise SatSynthError(f"unknown encoder {encoder!r}") from None
    std = load_named_weights(model, spec, encoder, 3)
    cache = str(torchgeo_cache()) if spec.kind == "torchgeo" else _hf_cache()
    return {"weights": spec.label, "encoder": encoder, "cache": cache,
            "standardization": std}


def weights_cached(value: str, encoder: str) -> tuple[bool, str]:
    """Whether named weights are in their cache (nothing is downloaded): (True, the file) or
    (False, the cache folder they would be in). Files are (True, the path) when they exist."""
    spec = parse_weights(value, encoder)
    if spec is None:
        return True, ""
    if spec.kind == "file":
        return Path(spec.name).is_file(), spec.name
    if spec.kind == "torchgeo":
        fname = os.path.basename(_torchgeo_weights(spec.name).url.split("?")[0])
        path = torchgeo_cache() / fname
        return path.is_file(), str(path if path.is_file() else torchgeo_cache())
    from huggingface_hub import try_to_load_from_cache

    s = _smp_settings(encoder, spec.name)
    found = try_to_load_from_cache(s["repo_id"], "model.safetensors", revision=s["revision"])
    return (True, found) if isinstance(found, str) else (False, _hf_cache())
