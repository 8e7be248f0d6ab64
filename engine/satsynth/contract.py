"""The engine-plugin contract: what the engine and the QGIS plugin must agree on, said once.

- the class table's schema and its validation (ids, names, colours, ignore values, limits,
  default colours), and the normalization's (per-band low/high, band data type);
- the choice lists of the command line (architectures, generator presets, recipes, samplers,
  devices, budgets, variants, layouts, runtimes...);
- the option declarations of the stages (dataclasses with their defaults), from which the CLI
  parsers, the engine's option classes and the plugin's defaults derive;
- the output folder kinds and the markers that recognise them, and where a class output's QGIS
  style lies;
- the progress protocol (``--progress json``): its event names, the CLI's exit codes, the
  prefixes of its last stderr line and the format of its log lines on stderr.

Standard library only: the engine imports it as ``satsynth.contract``; the plugin, which must not
import the engine's package (it pulls the deep-learning stack), loads this same file by its path
(``satsynth_qgis/contract.py``). Problems raise :class:`ContractError` (one line); the engine turns
it into its ``SatSynthError``.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ContractError(ValueError):
    """A value the engine refuses: ``reason`` says why, ``where`` (optional) names its source."""

    def __init__(self, reason: str, where: str | None = None) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {reason}" if where is not None else reason)


# --------------------------------------------------------------------------------------------
# the class table

#: The model's ignore index and the nodata value of every class raster written: no class id.
IGNORE_INDEX = 255
#: Class ids (the user's label values) are whole numbers in 0..MAX_CLASS_ID.
MAX_CLASS_ID = 254
#: At most this many classes in one table.
MAX_CLASSES = 254


@dataclass(frozen=True)
class ClassInfo:
    """One class: its value in the user's data, its name and its display colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    def hex(self) -> str:
        """Colour as '#rrggbb'."""
        return hex_color(self.color)


def hex_color(rgb: Sequence[int]) -> str:
    """An RGB triple as '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def default_color(i: int) -> tuple[int, int, int]:
    """A distinct colour for class number ``i`` (golden-ratio hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def strict_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    """An integer from JSON/YAML (an int, a whole float like 3.0, or digits), else a clear error:
    ``1.7``, ``"one"`` and ``true`` are refused, never rounded or guessed."""
    if isinstance(value, bool):
        v = None
    elif isinstance(value, int):
        v = value
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        v = int(value)
    else:
        v = None
    if v is None:
        raise ContractError(f"{what} must be a whole number, got {value!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ContractError(f"{what} must be in {low}..{high}, got {v}")
    return v


def parse_color(value: Any, where: str = "class table") -> tuple[int, int, int]:
    """Parse '#RRGGBB', 'RRGGBB' or [r, g, b] into an RGB tuple."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif isinstance(value, Sequence) and len(value) >= 3:
        try:
            rgb = tuple(strict_int(v, "colour") for v in value[:3])
        except ContractError:
            rgb = (-1, -1, -1)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise ContractError(f"bad colour {value!r} in {where}: use '#RRGGBB' or [r, g, b]")


def check_classes(classes: Sequence[ClassInfo]) -> None:
    """The rules every class table keeps: some classes, at most :data:`MAX_CLASSES`, unique ids
    within 0..:data:`MAX_CLASS_ID`."""
    if not classes:
        raise ContractError("the class table has no classes")
    if len(classes) > MAX_CLASSES:
        raise ContractError(f"at most {MAX_CLASSES} classes are supported, got {len(classes)}")
    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids):
        raise ContractError(f"class ids must be unique, got {ids}")
    for c in classes:
        if not 0 <= c.id <= MAX_CLASS_ID:
            raise ContractError(f"class id {c.id} ({c.name}) is outside 0..{MAX_CLASS_ID}")


@dataclass
class ClassTableSpec:
    """A validated class table in plain values: the classes in model-index order, the label
    values to ignore and the mask colours to ignore."""

    classes: list[ClassInfo]
    ignore_ids: list[int] = field(default_factory=list)
    ignore_colors: list[tuple[int, int, int]] = field(default_factory=list)


def parse_class_table(data: Any, where: str = "class table") -> ClassTableSpec:
    """Read our JSON form, a bare list, a {name: colour} mapping, or a palette file like the
    Dubai dataset's (``{"ignore_color": ..., "classes": [...]}``), checked against one schema
    wherever a table comes from (class files, dataset.json, model configs, the plugin's editor):
    ids whole numbers in 0..254 and unique, names non-empty text and unique (ignoring case),
    colours '#RRGGBB' or [r, g, b]. A problem raises one :class:`ContractError` naming ``where``."""
    try:
        spec = _parse_class_table(data)
        check_classes(spec.classes)
    except ContractError as exc:
        raise ContractError(exc.reason, where) from None
    return spec


def _parse_class_table(data: Any) -> ClassTableSpec:
    ignore_ids: list[int] = []
    ignore_colors: list[tuple[int, int, int]] = []
    if isinstance(data, dict) and "classes" in data:
        items = data["classes"]
        raw_ids = data.get("ignore_ids", []) or []
        if not isinstance(raw_ids, list):
            raise ContractError(f"ignore_ids must be a list of label values, got {raw_ids!r}")
        ignore_ids = [strict_int(v, "an ignore id", 0, IGNORE_INDEX) for v in raw_ids]
        if "ignore_id" in data and data["ignore_id"] is not None:
            ignore_ids.append(strict_int(data["ignore_id"], "ignore_id", 0, IGNORE_INDEX))
        raw_colors = data.get("ignore_colors", []) or []
        if not isinstance(raw_colors, list):
            raise ContractError(f"ignore_colors must be a list of colours, got {raw_colors!r}")
        raw_colors = list(raw_colors)
        if data.get("ignore_color"):
            raw_colors.append(data["ignore_color"])
        ignore_colors = [parse_color(c, "ignore_colors") for c in raw_colors]
    elif isinstance(data, dict):
        items = [{"name": k, "color": v} for k, v in data.items()]
    else:
        items = data
    if not isinstance(items, list) or not items:
        raise ContractError(f"expected a non-empty list of classes, got {str(items)[:60]!r}")
    classes = []
    seen: dict[str, int] = {}
    for n, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ContractError(f"class entry {n} is not an object: {str(item)[:60]!r}")
        cid = strict_int(item.get("id", item.get("value", n)), f"class entry {n}: id", 0,
                         MAX_CLASS_ID)
        name = item.get("name", f"class {cid}")
        if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
            raise ContractError(f"class entry {n}: name must be non-empty text, got {name!r}")
        name = str(name).strip()
        if name.lower() in seen:
            raise ContractError(f"class name {name!r} is used twice (entries {seen[name.lower()]}"
                                f" and {n}): names must be unique")
        seen[name.lower()] = n
        color = (parse_color(item["color"], f"class entry {n}") if item.get("color")
                 else default_color(n))
        classes.append(ClassInfo(cid, name, color))
    return ClassTableSpec(classes, ignore_ids, ignore_colors)


def class_table_dict(spec: ClassTableSpec) -> dict[str, Any]:
    """The class table's JSON form (what class files, dataset.json and model configs hold)."""
    return {
        "classes": [{"id": c.id, "name": c.name, "color": c.hex()} for c in spec.classes],
        "ignore_ids": list(spec.ignore_ids),
        "ignore_colors": [hex_color(c) for c in spec.ignore_colors],
    }


def classes_from_values(values: Iterable[int], names: dict[int, str] | None = None,
                        colors: dict[int, tuple[int, int, int]] | None = None) -> list[ClassInfo]:
    """Classes for the label values present: sorted, named 'class V' and given default colours
    unless ``names`` / ``colors`` say otherwise."""
    names, colors = names or {}, colors or {}
    vals = sorted({int(v) for v in values})
    return [ClassInfo(v, names.get(v, f"class {v}"), colors.get(v, default_color(i)))
            for i, v in enumerate(vals)]


def classes_from_names(names: Iterable[str], background: str | None = "background"
                       ) -> list[ClassInfo]:
    """Classes for text class names (e.g. a vector field): ``background`` (black) gets id 0, the
    names ids 1..N in sorted order."""
    classes = []
    if background is not None:
        classes.append(ClassInfo(0, background, (0, 0, 0)))
    for n in sorted({str(n) for n in names}):
        if background is not None and n == background:
            continue
        i = len(classes)
        classes.append(ClassInfo(i, n, default_color(i)))
    return classes


# --------------------------------------------------------------------------------------------
# the normalization: per-band source values mapped to the model's [-1, 1]

#: A band's data type (numpy's names): what a normalization's ``dtype`` may be.
BAND_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
               "float16", "float32", "float64")


@dataclass
class NormalizationSpec:
    """A validated normalization in plain values: per band the source values mapped to -1 and 1
    (``low``, ``high``), and the bands' data type."""

    low: list[float]
    high: list[float]
    dtype: str = BAND_DTYPES[0]


def parse_normalization(data: Any) -> NormalizationSpec:
    """Read a normalization's JSON form (what dataset.json and model configs hold), checked: finite
    ``low`` and ``high`` numbers, one per band, and a :data:`BAND_DTYPES` data type (default
    uint8). A problem raises one :class:`ContractError` line."""
    try:
        low = [float(v) for v in data["low"]]
        high = [float(v) for v in data["high"]]
        dtype = data.get("dtype", BAND_DTYPES[0])
        if dtype not in BAND_DTYPES:
            raise ValueError(dtype)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ContractError("normalization must hold per-band 'low' and 'high' numbers and a "
                            "data type") from None
    if not low or len(low) != len(high) or not all(math.isfinite(v) for v in low + high):
        raise ContractError(f"normalization: 'low' and 'high' must be finite numbers, one per "
                            f"band, got {low} and {high}")
    return NormalizationSpec(low, high, dtype)


# --------------------------------------------------------------------------------------------
# choice lists (the first entry is the one the plugin shows first; defaults are in the options)

#: ``--device`` values the plugin offers (the CLI also takes cuda:N); auto is every stage's default.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``--progress``: a bar on stderr for people, JSON lines on stdout for the plugin, or nothing.
PROGRESS_MODES = ("bar", "json", "quiet")
#: ``--mixed-precision``: auto (the default) autocasts to bf16 where the device computes it fast
#: (CPUs with AVX512-BF16 or AMX, GPUs with bf16), to fp16 where only fp16 is fast, and stays in
#: float32 elsewhere (``satsynth.device.choose_mixed_precision``); weights stay float32.
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
#: Environment variable: CPU cores the engine leaves to other programs when it chooses its thread
#: count (``satsynth.threads``); the QGIS plugin sets it to :data:`PLUGIN_LEAVE_CORES`.
ENV_LEAVE_CORES = "SATSYNTH_LEAVE_CORES"
#: Cores the plugin leaves to QGIS itself (on a machine with more than one usable core).
PLUGIN_LEAVE_CORES = 1

#: The small conv net without downsampling (tests, quick CPU runs); its encoder reads
#: "w<width>d<depth>", e.g. :data:`TINY_ENCODER`.
TINY_ARCH = "tiny"
TINY_ENCODER = "w16d2"


def tiny_encoder(encoder: str) -> tuple[int, int] | None:
    """(width, depth) of a tiny-net encoder name 'w<width>d<depth>' (width >= 1), e.g. 'w16d2' ->
    (16, 2); None when ``encoder`` is not one."""
    m = re.fullmatch(r"w(\d+)d(\d+)", str(encoder))
    return (int(m[1]), int(m[2])) if m and int(m[1]) >= 1 else None

#: Segmenter architectures: segmentation_models_pytorch's, then :data:`TINY_ARCH`.
ARCHITECTURES = ("fpn", "unet", "deeplabv3plus", "pspnet", "segformer", TINY_ARCH)
#: Encoders suggested for the architectures other than tiny (any smp encoder name works).
ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b1",
            "mobilenet_v2", "mit_b0")
#: Pretrained encoder weights the plugin offers besides a local file (``--encoder-weights``):
#: random, smp's ImageNet weights, or TorchGeo weights named after :data:`TORCHGEO_PREFIX`.
PRETRAINED = ("none", "imagenet", "torchgeo")
TORCHGEO_PREFIX = "torchgeo:"
#: TorchGeo weights suggested for RGB aerial/satellite images (an 8-bit RGB ResNet-50).
TORCHGEO_SUGGESTED = "ResNet50_Weights.FMOW_RGB_GASSL"
CLASS_WEIGHTS = ("none", "auto")
#: How synthetic pairs enter training: mixed into every epoch, or a pre-training phase on them
#: followed by fine-tuning on the real chips.
SYNTHETIC_MODES = ("mix", "pretrain")
#: After the warm-up: cosine to 0 by the end of the budget, or constant.
LR_SCHEDULES = ("cosine", "constant")
#: Batch-norm statistics of the models a run with synthetic chips validates and keeps: the
#: running averages over its training batches (all), or re-estimated on its real training chips.
BATCH_NORM_STATS = ("all", "real")

#: Generator UNet sizes: tiny (CPU demos, about 1 M parameters), small, base (paper scale).
GENERATOR_PRESETS = ("tiny", "small", "base")
#: Generator training recipes: the product's, or SatSynth (CVPR 2024) as published.
RECIPES = ("default", "paper")
ENCODINGS = ("bits", "onehot")
PREDICTIONS = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "cosine")
SNR_WEIGHTINGS = ("auto", "min-snr", "min-snr+1")
#: What the generator is conditioned on: each chip's class pixel shares, or nothing (the paper).
CONDITIONS = ("class-shares", "none")
SAMPLERS = ("dpm", "ddim", "ddpm")
UPSAMPLER_FACTORS = (2, 4)

#: Experiment training budgets per run (see ``satsynth experiment --help``).
BUDGETS = ("steps", "epochs", "converge")
#: Ways an experiment uses synthetic pairs (each compared with the real-only run of its seed).
VARIANTS = ("mix", "pretrain", "tstr", "filtered", "filtered-pretrain", "mix-realbn",
            "mix-weighted", "real-repeat")

#: Published datasets ``prepare --folder --layout`` reads as downloaded.
LAYOUTS = ("loveda", "openearthmap", "isaid")

#: ``predict --runtime``: ONNX Runtime on a CPU when installed (auto), torch, or onnx.
RUNTIMES = ("auto", "torch", "onnx")
EXPORT_FORMATS = ("onnx",)
#: ``predict``'s tiles per forward pass per device type when ``--batch`` is 0 (the default): on a
#: CPU a bigger batch costs memory and buys no speed (benchmarks/bench_predict_memory.py); on a
#: GPU it fills the device.
PREDICT_BATCH = {"cpu": 1, "cuda": 8, "mps": 8}


# --------------------------------------------------------------------------------------------
# stage options, declared once: the engine's option classes derive from these, the CLI parsers
# and the plugin's parameters take their defaults from them


def bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """A field's accepted range (inclusive; None: unbounded), as ``field(metadata=...)``."""
    return {"min": low, "max": high}


def field_bounds(fields_cls: Any, name: str) -> tuple[Any, Any]:
    """(min, max) declared with a stage field (``bounds``); (None, None) when it declares none."""
    meta = fields_cls.__dataclass_fields__[name].metadata
    return meta.get("min"), meta.get("max")


def range_problems(options: Any) -> list[str]:
    """One line per field of ``options`` (a stage-fields dataclass) outside its declared range,
    naming the command-line option: '--chip-size must be in 8..4096, got 4'."""
    problems = []
    for name, f in options.__dataclass_fields__.items():
        low, high = f.metadata.get("min"), f.metadata.get("max")
        value = getattr(options, name)
        if value is None or (low is None and high is None):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low:g}" if high is None else f"in {low:g}..{high:g}"
            problems.append(f"--{name.replace('_', '-')} must be {span}, got {value:g}")
    return problems


@dataclass
class PrepareFields:
    """How ``prepare`` cuts and splits chips: its options, defaults and accepted ranges (the
    plugin's Prepare and Pipeline parameters take theirs from these)."""

    chip_size: int = field(default=128, metadata=bounds(8, 4096))
    stride: int | None = field(default=None, metadata=bounds(1, 4096))  # None: the chip size
    val_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9))
    val_sources: tuple[str, ...] = ()
    test_fraction: float = field(default=0.0, metadata=bounds(0.0, 0.9))  # spatial blocks
    test_sources: tuple[str, ...] = ()
    block_size: int = field(default=4, metadata=bounds(1))  # spatial split block, in chips
    seed: int = 0
    min_labeled: float = field(default=0.5, metadata=bounds(0.0, 1.0))
    max_chips: int | None = field(default=None, metadata=bounds(1))
    line_buffer: float = field(default=0.0, metadata=bounds(0.0))  # metres, lines and points
    all_touched: bool = False
    labels_on_image_grid: bool = False  # label rasters drawn on the image's pixels, no georef
    background: str | None = "background"  # None: pixels no feature covers are ignored


@dataclass
class SegmenterTrainFields:
    """The options of one segmenter training run (``train-segmenter``) and their defaults."""

    arch: str = "fpn"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    epochs: int = 30
    max_steps: int | None = None  # optimizer steps in total (overrides epochs when given)
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    dice: bool = False
    class_weights: str = "none"
    patience: int = 8
    real_fraction: float = 1.0
    subset_seed: int = 0
    minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    augment: bool = True
    val_batch_size: int = 32
    synthetic_mode: str = "mix"
    synthetic_only: bool = False  # TSTR: train on the synthetic pairs alone, validate on real
    val_every: int | None = None  # optimizer steps between validations (None: every epoch)
    patience_steps: int | None = None  # with val_every: stop after this many steps w/o gain
    lr_schedule: str = "cosine"
    # mix: every batch holds batch_size real chips (the real-only run's batches) plus R x
    # batch_size synthetic ones on top, so every R sees the same real chips at every step
    synthetic_on_top: bool = False
    # after training: this many more steps with the learning rate annealed to 0 (cosine) and the
    # weights averaged over them; the average is the model kept (not the best validation)
    anneal_steps: int | None = None
    # mix: each pixel of a synthetic chip counts this many times a real chip's pixel in the loss
    synthetic_weight: float = 1.0
    # one of BATCH_NORM_STATS: "real" re-estimates batch norm on the real training chips before
    # every validation of a run with synthetic chips (so the kept model has real statistics)
    batch_norm_stats: str = "all"


@dataclass
class GeneratorTrainFields:
    """The options of one generator training run (``train-generator``, ``train-upsampler``) and
    their defaults: the recipe that converged fastest on 2 CPU cores
    (benchmarks/bench_generator_convergence.py)."""

    recipe: str = "default"
    preset: str = "tiny"
    block_widths: list[int] | None = None
    encoding: str = "bits"
    prediction: str = "v_prediction"
    beta_schedule: str = "cosine"
    snr_gamma: float | None = 5.0
    snr_weighting: str = "auto"
    condition: str = "class-shares"
    size: int | None = None  # train at this many px: chips area-downsampled (None = as stored)
    steps: int = 2000
    minutes: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    grad_accum: int = 1
    mixed_precision: str = "auto"
    class_balanced: bool = False
    augment: bool = True
    checkpoint_every: int = 500
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


@dataclass
class SynthesizeFields:
    """The options of ``synthesize`` and their defaults (sampler None: the model's recipe's)."""

    sampler: str | None = None
    steps: int = 20
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"


_SEG = SegmenterTrainFields()
_SYN = SynthesizeFields()


@dataclass
class ExperimentFields:
    """What ``satsynth experiment`` runs and its defaults; the segmenter's options default to
    ``train-segmenter``'s, the sampler's to ``synthesize``'s."""

    ratios: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0])
    seeds: int = 3
    real_fraction: float = _SEG.real_fraction
    count_per_real: float | None = None  # synthetic pool size per real chip (default max R)
    arch: str = _SEG.arch
    encoder: str = _SEG.encoder
    encoder_weights: str | None = _SEG.encoder_weights
    epochs: int = _SEG.epochs
    budget: str = BUDGETS[0]  # one of BUDGETS
    variants: list[str] = field(default_factory=lambda: [VARIANTS[0]])
    val_every: int | None = None  # steps between validations (default: one pass over real chips)
    filter_keep: float = 0.5  # share of the pool the filtered variants keep
    synthetic_weight: float = 0.5  # the mix-weighted variant's (train-segmenter's, default 1)
    batch_size: int = _SEG.batch_size
    lr: float = _SEG.lr
    dice: bool = _SEG.dice
    class_weights: str = _SEG.class_weights
    patience: int = _SEG.patience
    minutes_per_run: float | None = None
    sampler: str | None = _SYN.sampler  # None: the generator's recipe's (see synthesize)
    steps: int = _SYN.steps
    synth_batch_size: int = _SYN.batch_size
    device: str = "auto"
    keep_models: bool = False


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    """The experiment's synthetic ratios R: '2, 0, 1, 1' (or a list) -> [0.0, 1.0, 2.0], sorted and
    without repeats. Raises :class:`ContractError` unless they are finite numbers >= 0."""
    try:
        if isinstance(text, str):
            vals = [float(t) for t in text.replace(" ", "").split(",") if t]
        else:
            vals = [float(v) for v in text]
    except (TypeError, ValueError):
        raise ContractError(f"--ratios must be numbers separated by commas, got {text!r}"
                            ) from None
    if not vals or any(v < 0 or not math.isfinite(v) for v in vals):
        raise ContractError(f"--ratios must be numbers >= 0, got {text!r}")
    return sorted(set(vals))


@dataclass
class PredictFields:
    """The options of ``predict`` that the plugin shows too, their defaults and accepted ranges
    (``export`` and the plugin's Segment raster, Export and Pipeline parameters take theirs from
    these; :func:`tiling_problems` checks them)."""

    tile: int = field(default=512, metadata=bounds(16, 8192))
    overlap: int = field(default=64, metadata=bounds(0, 4096))  # and at most half the tile
    batch: int = field(default=0, metadata=bounds(0))  # 0: the device's (PREDICT_BATCH)
    runtime: str = RUNTIMES[0]
    device: str = "auto"


#: How :func:`tiling_problems` names the values: the command line's options (the plugin passes
#: its own words).
TILING_NAMES = {"tile": "--tile {}", "overlap": "--overlap {}", "batch": "--batch {}"}


def tiling_problems(tile: int, overlap: int, batch: int = 0, multiple: int = 1,
                    arch: str = "", names: dict[str, str] | None = None) -> list[str]:
    """The tiling rule of ``predict`` and ``export`` (and of the plugin's checks before it starts
    them): the tile within :class:`PredictFields`' range and a multiple of the model's input
    multiple, the overlap from 0 to half the tile, the batch at least 1 or 0 (the device's).

    Args:
        tile: tile side in pixels.
        overlap: pixels shared by neighbouring tiles.
        batch: tiles per forward pass (0: the device's default).
        multiple: every input side of the model must be a multiple of this (1: unknown or any).
        arch: the model's architecture, named in the multiple's message.
        names: how to name each value in the messages, a format with one ``{}`` per key of
            :data:`TILING_NAMES` (default: the command line's options).

    Returns:
        One line per broken rule (empty when the values can be used).
    """
    names = {**TILING_NAMES, **(names or {})}
    t_low, t_high = field_bounds(PredictFields, "tile")
    o_low, _ = field_bounds(PredictFields, "overlap")
    b_low, _ = field_bounds(PredictFields, "batch")
    problems = []
    if not t_low <= tile <= t_high or tile % max(multiple, 1):
        rule = f" and a multiple of {multiple} for a {arch or 'this'} model" if multiple > 1 else ""
        problems.append(f"{names['tile'].format(tile)} must be in {t_low}..{t_high}{rule} (e.g. "
                        "256, 512 or 1024)")
    if not o_low <= overlap <= tile // 2:
        problems.append(f"{names['overlap'].format(overlap)} must be at least {o_low} and at most "
                        f"half the tile ({tile // 2} px for {tile} px tiles)")
    if batch < b_low:
        problems.append(f"{names['batch'].format(batch)} must be at least 1 (or 0: the device's "
                        "default)")
    return problems


# --------------------------------------------------------------------------------------------
# output folders: their kinds and markers

#: ``check-output --kind`` of single-file outputs (a prediction raster, a GeoPackage, a model).
FILE_KIND = "file"
#: The mark SatSynth writes into its single-file outputs (a GeoTIFF metadata tag, a GeoPackage's
#: dataset metadata, a comment in a ``.qml``; an ONNX export carries ``satsynth_*`` metadata):
#: only a file with it may be replaced by a new output.
OUTPUT_MARK = "SATSYNTH_OUTPUT"
#: The QGIS style SatSynth writes beside a class output (a class raster, class polygons, a label
#: mosaic): the output's name with this suffix, which is where QGIS itself looks for a layer's
#: default style.
STYLE_SUFFIX = ".qml"


def style_path(output: str | Path) -> Path:
    """The style of the class output ``output`` (``pred.tif`` -> ``pred.qml``; ``pred.gpkg``
    -> ``pred.qml`` too: a prediction's raster and polygons of one name share it)."""
    return Path(output).with_suffix(STYLE_SUFFIX)


#: What marks a chip store (a dataset, or a synthetic set with ``"synthetic": true``).
DATASET_MARKER = "dataset.json"
DATASET_FORMAT = "satsynth-chips"
#: What marks a model folder: ``config.json`` with the model's ``kind``.
MODEL_MARKER = "config.json"
#: Model folder kinds (``config.json``'s ``kind``).
MODEL_KINDS = ("generator", "upsampler", "segmenter")


@dataclass(frozen=True)
class FolderKind:
    """One kind of output folder: the file that marks it, how the engine names it in messages
    and how the plugin names it (after the algorithm that makes it; '' if none)."""

    name: str
    marker: str
    engine_text: str
    plugin_text: str = ""


FOLDER_KINDS: dict[str, FolderKind] = {k.name: k for k in (
    FolderKind("dataset", DATASET_MARKER, "a dataset folder (satsynth prepare)",
               "a dataset folder made by 'Prepare training chips'"),
    FolderKind("synthetic", DATASET_MARKER, "a synthetic folder (satsynth synthesize)",
               "a synthetic folder made by 'Synthesize image-mask pairs'"),
    FolderKind("evaluation", "report.json", "an evaluation report folder (satsynth evaluate)"),
    FolderKind("experiment", "runs.json", "an experiment folder (satsynth experiment)"),
    FolderKind("demo", "summary.json", "a demo output folder (satsynth demo)"),
    FolderKind("generator", MODEL_MARKER, "a generator model folder",
               "a generator folder made by 'Train joint generator'"),
    FolderKind("upsampler", MODEL_MARKER, "an upsampler model folder",
               "an upsampler folder made by 'Train upsampler'"),
    FolderKind("segmenter", MODEL_MARKER, "a segmenter model folder",
               "a segmenter folder made by 'Train segmenter'"),
)}


def read_json(path: Path) -> Any:
    """A JSON file's content, None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json`` ({} when there is none or it is unreadable)."""
    cfg = read_json(Path(folder) / MODEL_MARKER)
    return cfg if isinstance(cfg, dict) else {}


def model_kind(folder: str | Path) -> str | None:
    """The ``kind`` in a model folder's ``config.json`` (None when it is not a model folder)."""
    kind = model_config(folder).get("kind")
    return kind if isinstance(kind, str) else None


def _store_meta(folder: Path) -> dict[str, Any] | None:
    meta = read_json(folder / DATASET_MARKER)
    return meta if isinstance(meta, dict) and meta.get("format") == DATASET_FORMAT else None


def _is_dataset(folder: Path) -> bool:
    meta = _store_meta(folder)
    return meta is not None and not meta.get("synthetic", False)


def _is_synthetic(folder: Path) -> bool:
    meta = _store_meta(folder)
    return meta is not None and bool(meta.get("synthetic", False))


def _is_evaluation(folder: Path) -> bool:
    rep = read_json(folder / "report.json")
    return isinstance(rep, dict) and "miou" in rep and "confusion" in rep


def _is_experiment(folder: Path) -> bool:
    return any((folder / m).is_file() for m in ("runs.json", "results.json",
                                                  "synthetic/cache.json"))


def _is_demo(folder: Path) -> bool:
    return ((folder / "summary.json").is_file() or (folder / "scene").is_dir()
            or _is_dataset(folder / "dataset"))


#: Folder kinds recognised by their own content (any other kind is a model folder).
_RECOGNISERS = {"dataset": _is_dataset, "synthetic": _is_synthetic,
                "evaluation": _is_evaluation, "experiment": _is_experiment, "demo": _is_demo}


def is_kind(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` is a SatSynth output of ``kind``."""
    folder = Path(folder)
    test = _RECOGNISERS.get(kind)
    return test(folder) if test is not None else model_kind(folder) == kind


def output_kind(folder: str | Path) -> str | None:
    """Which SatSynth output ``folder`` is (``dataset``, ``generator``...), None if none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for kind, test in _RECOGNISERS.items():
        if test(folder):
            return kind
    return model_kind(folder)


# --------------------------------------------------------------------------------------------
# the progress protocol: one JSON object per stdout line, its "event" says which

#: ``{"event": "progress", "stage", "fraction", "message", "eta_s", "done", "total", ...}``
EVENT_PROGRESS = "progress"
#: ``{"event": "done", "outputs": {...}}``: the command's last line when it succeeds.
EVENT_DONE = "done"
#: ``{"event": "error", "message": ..., "cancelled": bool}``: the last line when it fails.
EVENT_ERROR = "error"
#: Message lines the plugin shows (``"message"``; a warning when ``"level": "warning"``); the
#: engine's own log goes to stderr as plain lines.
MESSAGE_EVENTS = ("log", "warning", "info")
EVENT_WARNING = "warning"

#: The CLI's exit codes besides 0 (success) and 1 (an internal error, with its traceback): a
#: refused input or a failure the user can fix (one line, also in the "error" event), a cancel
#: (Ctrl+C, a stop signal, or a resumable stop after a checkpoint).
EXIT_REFUSED = 2
EXIT_CANCELLED = 130
#: How the CLI's last stderr line starts when it repeats the "error" event's message.
CLI_ERROR = "satsynth: error: "
CLI_INTERNAL_ERROR = "satsynth: internal error: "
CLI_CANCELLED = "satsynth: cancelled"

#: The engine's log on stderr: one ``LEVEL: message`` line per record, ``LEVEL`` one of logging's
#: level names (a record's further lines, a traceback's, follow as they are). Any other stderr
#: line (the CLI's last line above, a library's warning, a traceback) is not a log line.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_SEPARATOR = ": "


def format_log_line(level: str, message: str) -> str:
    """One log record as the engine writes it on stderr: ``LEVEL: message``."""
    return f"{level}{LOG_SEPARATOR}{message}"


def parse_log_line(line: str) -> tuple[str, str] | None:
    """``(level, message)`` of a line :func:`format_log_line` wrote; None for any other line."""
    level, sep, message = line.partition(LOG_SEPARATOR)
    return (level, message) if sep and level in LOG_LEVELS else None
