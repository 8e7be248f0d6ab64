"""The experiment's protocol: named variants (how synthetic pairs are used), the final evaluation on
the held-out test split, and paired differences to the real-only run of the same seed.

Seed ``s`` of every variant and ratio shares with the real-only run (R=0) of seed ``s`` the real
subset, the initialisation and the order in which the real chips are visited (see
:class:`satsynth.segmenter.mixing.PairedOrder`), so the difference of their scores measures what
the synthetic pairs changed. Differences are summarized per (variant, R) by their mean over seeds
with a Student-t 95 % interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.contract import ExperimentFields
from satsynth.data.store import TEST_SPLIT, ChipStore
from satsynth.errors import SatSynthError

log = logging.getLogger("satsynth")

#: The real-only arm every variant is compared with (ratio 0).
BASELINE = "real"


@dataclass(frozen=True)
class PoolContext:
    """What a variant's pool hook gets to choose the synthetic stores of one run."""

    dataset: Path
    pool: list[str]  # the experiment's synthetic stores
    out: Path  # the experiment folder (a hook may cache what it derives there)
    seed: int
    ratio: float
    # the R=0 segmenter of this seed, kept while the experiment runs when a variant needs it;
    # None when it is gone (an experiment resumed after its R=0 runs finished)
    baseline_model: Path | None
    options: dict[str, Any] = field(default_factory=dict)  # the experiment's settings


@dataclass(frozen=True)
class Variant:
    """One way of using synthetic pairs, run for each R > 0 and compared with R=0.

    ``mode``: ``mix``, ``pretrain`` (see ``train-segmenter --synthetic-mode``) or
    ``synthetic-only`` (TSTR). ``max_ratio_only``: run at the largest R alone. ``pool``: a hook
    returning the synthetic stores of a run (e.g. a filtered pool; default the experiment's).
    ``needs_baseline_model``: the hook reads the R=0 segmenter of the same seed. ``key``: extra
    identity of the variant's runs (change it when the hook's settings change); it may name
    experiment settings in braces, e.g. ``keep{filter_keep:g}``. ``train_options``: options of
    ``train_segmenter`` the variant's runs (R > 0) train with; a value may be a callable of the
    experiment's settings (a dict) returning it. The key must name what they change.
    """

    name: str
    mode: str = "mix"
    max_ratio_only: bool = False
    pool: Callable[[PoolContext], list[str]] | None = None
    needs_baseline_model: bool = False
    key: str = ""
    train_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def run_options(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The variant's ``train_options`` for an experiment with these ``settings``."""
        return {k: v(settings) if callable(v) else v for k, v in self.train_options.items()}


#: Variants ``experiment --variants`` knows; other stages add theirs with :func:`register_variant`.
VARIANTS: dict[str, Variant] = {
    "mix": Variant("mix"),
    "pretrain": Variant("pretrain", mode="pretrain"),
    "tstr": Variant("tstr", mode="synthetic-only", max_ratio_only=True),
}


def register_variant(variant: Variant) -> None:
    """Make ``variant`` available to ``experiment --variants`` under its name."""
    VARIANTS[variant.name] = variant


#: Default share of the pool the ``filtered`` variants keep (``experiment --filter-keep``, declared
#: in :class:`satsynth.contract.ExperimentFields`): the pairs that the real-only run (R=0) of the
#: same seed finds most consistent (:func:`satsynth.segmenter.scoring.filtered_pool`).
FILTER_KEEP = ExperimentFields.filter_keep


def _filtered_pool(ctx: PoolContext) -> list[str]:
    from satsynth.segmenter.scoring import filtered_pool

    return filtered_pool(ctx.pool, ctx.out, ctx.seed, ctx.baseline_model,
                         float(ctx.options.get("filter_keep", FILTER_KEEP)))


register_variant(Variant("filtered", pool=_filtered_pool, needs_baseline_model=True,
                         key="keep{filter_keep:g}"))
register_variant(Variant("filtered-pretrain", mode="pretrain", pool=_filtered_pool,
                         needs_baseline_model=True, key="keep{filter_keep:g}"))
# the cheap remedies of a mix: batch-norm statistics of the real chips only, and synthetic pixels
# weighted down in the loss (``experiment --synthetic-weight``)
register_variant(Variant("mix-realbn", key="bnreal",
                         train_options={"batch_norm_stats": "real"}))
register_variant(Variant("mix-weighted", key="synw{synthetic_weight:g}",
                         train_options={"synthetic_weight": itemgetter("synthetic_weight")}))


def _real_repeat_pool(ctx: PoolContext) -> list[str]:
    """The real training chips themselves, as the chips on top: the control of the mixes."""
    if float(ctx.options.get("real_fraction", 1.0)) < 1:
        raise SatSynthError("the real-repeat control puts the real training chips on top, and at "
                            "--real-fraction below 1 it would add chips from outside the subset: "
                            "make the subset with 'satsynth subset' and run at --real-fraction 1",
                            ctx.dataset)
    return [str(ctx.dataset)]


# the control of the mixes: R |D| of the real chips again on top of each run's batches (drawn as a
# mix draws its synthetic chips, augmented afresh), so the same batches and compute as ``mix``
# without synthetic content: what a mix gains beyond it is the synthetic pairs' own
register_variant(Variant("real-repeat", pool=_real_repeat_pool, key="realrepeat"))


def parse_variants(text: str | list[str]) -> list[Variant]:
    """'mix,pretrain,tstr' -> the registered variants, in that order."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise SatSynthError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose "
                            f"from {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in dict.fromkeys(names)]


def final_scores(model_dir: str | Path, dataset: str | Path, device: str = "auto",
                 batch_size: int = 32) -> tuple[dict[str, Any], str]:
    """Scores of a trained segmenter on the dataset's ``test`` split (the final evaluation: its
    training and selection are over), or on ``val`` when the dataset has no test split.
    Returns (scores, split reported on)."""
    from satsynth.device import resolve_device
    from satsynth.segmenter.evaluate import evaluate_chips
    from satsynth.segmenter.metrics import SegmentationMetrics
    from satsynth.segmenter.model import load_segmenter

    store = ChipStore(dataset)
    split = TEST_SPLIT if store.count(TEST_SPLIT) > 0 else "val"
    chips = store.split(split, final_evaluation=True)
    dev = resolve_device(device)
    model, cfg = load_segmenter(model_dir, dev)
    metrics = SegmentationMetrics(cfg.num_classes, dev)
    evaluate_chips(model, chips, cfg.normalization, metrics, batch_size, dev, show_progress=True)
    return metrics.compute(cfg.classes.names), split


def t_interval(values: list[float] | np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` with its standard error and Student-t ``level`` interval (bounds None
    for fewer than two values)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "se": None, "low": None, "high": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "se": None, "low": None, "high": None, "n": 1}
    se = float(v.std(ddof=1) / math.sqrt(n))
    h = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return {"mean": mean, "se": se, "low": mean - h, "high": mean + h, "n": n}


#: The smallest paired difference in test mIoU the experiment is meant to detect (the paper's
#: smaller gains are 1-2 points); the table says how many seeds would detect it.
TARGET_DIFFERENCE = 0.02
#: Power at which the minimum detectable difference is given.
POWER = 0.8


def min_detectable_difference(sd: float, n: int, level: float = 0.95,
                              power: float = POWER) -> float | None:
    """The smallest true paired difference a two-sided Student-t test at ``level`` detects with
    probability ``power`` from ``n`` paired seeds whose differences have standard deviation ``sd``:
    (t_{(1+level)/2, n-1} + t_{power, n-1}) sd / sqrt(n). None for fewer than two seeds."""
    from scipy import stats

    if n < 2 or sd is None or not math.isfinite(sd):
        return None
    t = stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(t * sd / math.sqrt(n))


def seeds_needed(sd: float | None, target: float = TARGET_DIFFERENCE, level: float = 0.95,
                 power: float = POWER, most: int = 100_000) -> int | None:
    """The fewest paired seeds whose minimum detectable difference (at this ``sd``) is at most
    ``target``; None when ``sd`` is unknown or more than ``most`` would be needed."""
    if sd is None or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    # the normal approximation gives a lower bound; count up from it
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(power)
    n = max(2, int(math.floor((z * sd / target) ** 2)))
    while n <= most:
        mde = min_detectable_difference(sd, n, level, power)
        if mde is not None and mde <= target:
            return n
        n += 1
    return None


def verdict(low: float | None, high: float | None, target: float = TARGET_DIFFERENCE) -> str:
    """What a paired interval says, in the words the table, the report, the dock and the README
    use: ``better`` / ``worse`` (the 95 % interval excludes 0), ``no difference of {target} or
    more`` (the whole interval lies within ±``target``), ``cannot tell`` (it contains 0 and
    reaches ``target`` or beyond on a side: too few seeds for their spread; the detectable
    difference of :func:`min_detectable_difference` says how far from enough), or ``cannot tell
    (1 seed)``."""
    if low is None or high is None:
        return "cannot tell (1 seed)"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -target < low and high < target:
        return f"no difference of {target:g} or more"
    return "cannot tell"


def paired_summary(runs: list[dict[str, Any]], class_names: list[str]) -> list[dict[str, Any]]:
    """One row per (variant, R): reported mIoU mean ± SE, the paired difference to R=0 of the
    same seeds (mean, 95 % t-interval), per-class IoU differences, and for synthetic-only runs
    the ratio to real-only."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r.get("variant", BASELINE), float(r["ratio"])), []).append(r)
    base = {r["seed"]: r for r in groups.get((BASELINE, 0.0), [])}
    order = [BASELINE] + [v for v in dict.fromkeys(k[0] for k in groups) if v != BASELINE]
    rows = []
    for variant in order:
        for ratio in sorted(r for v, r in groups if v == variant):
            rs = sorted(groups[(variant, ratio)], key=lambda r: r["seed"])
            m = t_interval([r["miou"] for r in rs])
            row: dict[str, Any] = {
                "variant": variant, "ratio": ratio, "mode": rs[0].get("mode", "mix"),
                "runs": len(rs), "seeds": [r["seed"] for r in rs],
                "miou_mean": m["mean"], "miou_se": m["se"], "miou_runs": [r["miou"] for r in rs],
                "val_miou_mean": t_interval([r.get("val_miou") for r in rs])["mean"],
                "steps_mean": float(np.mean([r.get("steps", 0) for r in rs])),
                "real_chips": rs[0].get("real_chips"),
                "synthetic_chips": rs[0].get("synthetic_chips"),
                "reported_on": rs[0].get("reported_on", "val"),
                "iou_mean": [_mean([r["iou"][k] for r in rs]) for k in range(len(class_names))]}
            paired = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
            d = t_interval([a["miou"] - b["miou"] for a, b in paired])
            row["paired_seeds"] = [a["seed"] for a, _ in paired]
            row["miou_delta"] = d["mean"]
            row["miou_delta_ci"] = [d["low"], d["high"]] if d["low"] is not None else None
            row.update(power_summary([a["miou"] - b["miou"] for a, b in paired], d))
            row["iou_delta"] = [_mean([None if a["iou"][k] is None or b["iou"][k] is None
                                       else a["iou"][k] - b["iou"][k] for a, b in paired])
                                for k in range(len(class_names))]
            if row["mode"] == "synthetic-only":
                q = t_interval([a["miou"] / b["miou"] for a, b in paired if b["miou"] > 0])
                row["ratio_to_real"] = q["mean"]
                row["ratio_to_real_ci"] = [q["low"], q["high"]] if q["low"] is not None else None
            rows.append(row)
    return rows


def power_summary(differences: list[float], interval: dict[str, Any]) -> dict[str, Any]:
    """The power of a paired comparison: the standard deviation of the differences, the minimum
    detectable difference (95 %, 80 % power) with the seeds observed, the seeds that would detect
    :data:`TARGET_DIFFERENCE` at that spread, and the :func:`verdict`."""
    d = np.asarray([x for x in differences if x is not None and math.isfinite(x)], dtype=float)
    n = len(d)
    sd = float(d.std(ddof=1)) if n >= 2 else None
    mde = min_detectable_difference(sd, n) if sd is not None else None
    return {"miou_delta_sd": sd, "mde": mde, "power": POWER,
            "target_difference": TARGET_DIFFERENCE, "seeds_for_target": seeds_needed(sd),
            "verdict": verdict(interval.get("low"), interval.get("high"))}


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


__all__ = ["BASELINE", "POWER", "TARGET_DIFFERENCE", "VARIANTS", "PoolContext", "Variant",
           "final_scores", "min_detectable_difference", "paired_summary", "parse_variants",
           "power_summary", "register_variant", "seeds_needed", "t_interval", "verdict"]
