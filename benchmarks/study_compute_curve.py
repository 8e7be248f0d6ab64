"""Issue 20's compute curve: what synthetic pairs do to the low-data segmenter, and how good the
pairs are, against the CPU minutes the generator trained for.

Each ``--point LABEL:CPU_MINUTES:GENERATOR:EXPERIMENT`` is one generator and the experiment run
with it (``satsynth experiment ... --keep-models``, so that the real-only models stay). For each
point it reads the experiment's paired differences (``results.json``: Δ test mIoU vs R=0 per
variant and R, the 95 % interval, the detectable Δ) and measures the pairs of its synthetic pool:

- **consistency**: the mean per-pair mIoU of the real-only segmenter of seed 0 on the synthetic
  image against the synthetic mask (``satsynth score-pairs``' score), and the same on the real
  training chips (its ceiling);
- **KID** between the synthetic images and the real training chips, on the pooled features of
  the last encoder stage of that segmenter (no downloaded weights; torchmetrics' KID with a
  custom feature extractor), and the real validation chips against the training chips as the
  floor two real samples give;
- **colour noise**: the RMS of the fine chroma (``compare_realism.py``) over the real chips';
- **batch norm**: how far the running statistics of the kept models lie from those re-estimated
  on the real training chips (mean |Δ mean| / sqrt(var) over the layers), and what each variant
  scores on val and test once they are re-estimated (rows ``VARIANT+realbn``: what
  ``train-segmenter --batch-norm-stats real`` does at the end of a run, measured here on the
  kept models without training them again).

Writes ``OUT/curve.json``, ``OUT/curve.md`` and ``OUT/compute_curve.png`` (Δ with its interval
and the pair figures on a log axis of generator CPU minutes).

    .venv/bin/python benchmarks/study_compute_curve.py DATASET --out OUT \
        --point 15min:15.2:gen15:exp15 --point 60min:61:gen60:exp60
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_realism import realism  # noqa: E402

#: The variants whose paired Δ the figure draws (the table has every row).
PLOTTED = ("mix", "pretrain", "mix-weighted", "mix+realbn")


def encoder_features(model: Any) -> Any:
    """A module: model inputs -> the last encoder stage of ``model``, average-pooled (N, C)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return self.model.encoder(x)[-1].float().mean(dim=(2, 3))

    return Pooled().eval()


def kid(feature: Any, real: np.ndarray, other: np.ndarray, normalizer: Any) -> tuple[float, float]:
    """KID (mean, std over subsets) of ``other`` against ``real`` chips on ``feature``."""
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(other))
    metric = KernelInceptionDistance(feature=feature, subset_size=min(100, n), subsets=50)
    with torch.inference_mode():
        for chips, is_real in ((real, True), (other, False)):
            for s in range(0, len(chips), 64):
                metric.update(torch.from_numpy(normalizer.to_model(np.asarray(chips[s:s + 64]))),
                              real=is_real)
        mean, std = metric.compute()
    return float(mean), float(std)


def consistency(model: Any, chips: Any, normalizer: Any, classes: int) -> float:
    """Mean per-pair mIoU of ``model``'s prediction against the pairs' own masks."""
    from satsynth.segmenter.consistency import pair_scores

    return float(np.nanmean(pair_scores(model, chips, normalizer, classes)[:, 0]))


def real_bn(model: Any, store: Any) -> Any:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on the real
    training chips of ``store`` as ``train-segmenter --batch-norm-stats real`` does
    (:func:`satsynth.segmenter.train.reestimate_batch_norm`, batches of 16)."""
    import copy

    from satsynth.segmenter.mixing import build_mix
    from satsynth.segmenter.train import reestimate_batch_norm

    ref = copy.deepcopy(model)
    mix = build_mix(store, [], 0.0)
    reestimate_batch_norm(ref, mix, mix.entries(), store.meta.normalizer, 16, "cpu")
    return ref.eval()


def bn_shift(model: Any, ref: Any) -> float:
    """Mean over batch-norm layers of |running mean - ref's running mean| / sqrt(ref's var)."""
    import torch

    shifts = []
    for a, b in zip(model.modules(), ref.modules(), strict=True):
        if isinstance(a, torch.nn.BatchNorm2d):
            d = (a.running_mean - b.running_mean).abs() / b.running_var.clamp(min=1e-5).sqrt()
            shifts.append(float(d.mean()))
    return float(np.mean(shifts))


def miou(model: Any, chips: Any, normalizer: Any, classes: Any) -> float:
    """mIoU of ``model`` over every chip of ``chips``."""
    from satsynth.segmenter.evaluate import evaluate_chips
    from satsynth.segmenter.metrics import SegmentationMetrics

    metrics = SegmentationMetrics(classes.num_classes, "cpu")
    evaluate_chips(model, chips, normalizer, metrics, 64, "cpu")
    return float(metrics.compute(classes.names)["miou"])


def realbn_runs(experiment: Path, store: Any) -> dict[str, Any]:
    """Every kept run of the experiment scored again with batch norm from the real chips: the
    batch-norm shift, and the val and test mIoU after re-estimation, per run folder."""
    from satsynth.segmenter.model import load_segmenter

    val = store.split("val")
    test = store.split("test", final_evaluation=True)  # the runs' training and selection are over
    out = {}
    for run in sorted(experiment.glob("runs/*-R*-seed*")):
        model, cfg = load_segmenter(run)
        ref = real_bn(model, store)
        out[run.name] = {"bn_shift": bn_shift(model, ref),
                         "val_miou_realbn": miou(ref, val, cfg.normalization, cfg.classes),
                         "test_miou_realbn": miou(ref, test, cfg.normalization, cfg.classes)}
    return out


def realbn_rows(results: dict[str, Any], runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired Δ (test and val mIoU) of each variant with batch-norm statistics re-estimated on
    the real chips against the real-only run of the same seed as trained; the row of the
    real-only runs themselves (``real+realbn``) shows what re-estimation alone does."""
    from satsynth.workflows.protocol import power_summary, t_interval

    recs = {(r["variant"], r["ratio"], r["seed"]): r for r in results["runs"]}
    rows = []
    for variant, ratio in dict.fromkeys((v, r) for v, r, _ in recs):
        d_test, d_val = [], []
        for v, r, seed in recs:
            base = recs.get(("real", 0.0, seed))
            name = next((k for k in runs if k.startswith(f"{v}-R{r:g}-seed{seed}-")), None)
            if v != variant or r != ratio or base is None or name is None:
                continue
            d_test.append(runs[name]["test_miou_realbn"] - base["miou"])
            d_val.append(runs[name]["val_miou_realbn"] - base["val_miou"])
        ci = t_interval(d_test)
        rows.append({"variant": f"{variant}+realbn", "ratio": ratio, "runs": len(d_test),
                     "miou_mean": None, "miou_delta": ci["mean"],
                     "miou_delta_ci": [ci["low"], ci["high"]] if ci["low"] is not None else None,
                     "val_delta": float(np.mean(d_val)) if d_val else None,
                     **power_summary(d_test, ci)})
    return rows


def measure_point(label: str, minutes: float, generator: Path, experiment: Path,
                  dataset: Path) -> dict[str, Any]:
    """The figures of one generator and its experiment."""
    from satsynth.data.store import ChipStore
    from satsynth.segmenter.model import load_segmenter

    results = json.loads((experiment / "results.json").read_text())
    real = ChipStore(dataset)
    train, val = real.split("train"), real.split("val")
    pool = [ChipStore(p) for p in sorted((experiment / "synthetic").glob("part-*"))]
    syn_images = np.concatenate([np.asarray(p.split("train").images) for p in pool])
    r0 = next(experiment.glob("runs/real-R0-seed0-*"))
    model, cfg = load_segmenter(r0)
    norm, k = cfg.normalization, cfg.num_classes
    feature = encoder_features(model)
    real_hf = realism(np.asarray(train.images))[0]
    point = {
        "label": label, "generator_cpu_minutes": minutes, "generator": str(generator),
        "experiment": str(experiment), "pool": int(len(syn_images)),
        "consistency": float(np.mean([consistency(model, p.split("train"), norm, k)
                                      for p in pool])),
        "consistency_real_train": consistency(model, train, norm, k),
        "kid_synthetic": kid(feature, np.asarray(train.images), syn_images, norm),
        "kid_real_val": kid(feature, np.asarray(train.images), np.asarray(val.images), norm),
        "chroma_hf_ratio": realism(syn_images)[0] / real_hf,
        "rows": [{k2: row.get(k2) for k2 in ("variant", "ratio", "runs", "miou_mean",
                                             "miou_delta", "miou_delta_ci", "miou_delta_sd",
                                             "mde", "seeds_for_target", "verdict",
                                             "iou_delta", "ratio_to_real")}
                 for row in results["summary"]],
        "classes": results["classes"],
        "seed_miou": seed_scores(results["runs"])}
    runs = realbn_runs(experiment, real)
    point["realbn_runs"] = runs
    point["rows"] += [{k2: row.get(k2) for k2 in point["rows"][0]} | {"val_delta":
                      row["val_delta"]} for row in realbn_rows(results, runs)]
    shifts = [v["bn_shift"] for k2, v in runs.items() if k2.startswith("mix-")]
    point["bn_shift_mix"] = float(np.mean(shifts)) if shifts else None
    point["bn_shift_real_only"] = float(np.mean([v["bn_shift"] for k2, v in runs.items()
                                                 if k2.startswith("real-")]))
    return point


def seed_scores(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Test mIoU by ``VARIANT@R`` and seed."""
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        out.setdefault(f"{r['variant']}@{r['ratio']:g}", {})[str(r["seed"])] = r["miou"]
    return out


#: The control (no generator: the same for every point) and the variants compared with it.
CONTROL = "real-repeat"
AGAINST_CONTROL = ("mix", "mix-weighted")


def control_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired Δ (test mIoU, same seeds) of each mix against the real-repeat control of the same
    R, which needs no generator and so serves every point (taken from the first that has it)."""
    from satsynth.workflows.protocol import power_summary, t_interval

    controls = {k: v for p in reversed(points) for k, v in p.get("seed_miou", {}).items()
                if k.startswith(CONTROL + "@")}
    rows = []
    for p in points:
        for key, scores in p.get("seed_miou", {}).items():
            variant, ratio = key.split("@")
            control = controls.get(f"{CONTROL}@{ratio}")
            if variant not in AGAINST_CONTROL or control is None:
                continue
            d = [scores[s] - control[s] for s in scores if s in control]
            ci = t_interval(d)
            rows.append({"label": p["label"], "variant": variant, "ratio": float(ratio),
                         "runs": len(d), "miou_delta": ci["mean"],
                         "miou_delta_ci": [ci["low"], ci["high"]] if ci["low"] is not None
                         else None, **power_summary(d, ci)})
    return rows


def markdown(points: list[dict[str, Any]]) -> str:
    """The curve's tables."""
    from satsynth.workflows.protocol import verdict

    lines = ["| generator | CPU min | pool | consistency (real chips) | KID synthetic (real val) "
             "| chroma HF x real | BN shift mix (real only) | TSTR, share of real only |",
             "|---|---:|---:|---|---|---:|---|---|"]
    for p in points:
        tstr = next((r for r in p["rows"] if r["variant"] == "tstr"), None)
        share = "" if tstr is None or tstr.get("ratio_to_real") is None else \
            f"{tstr['ratio_to_real']:.1%} ({tstr['runs']} seeds)"
        lines.append(
            f"| {p['label']} | {p['generator_cpu_minutes']:g} | {p['pool']} | "
            f"{p['consistency']:.3f} ({p['consistency_real_train']:.3f}) | "
            f"{p['kid_synthetic'][0]:.4f} ± {p['kid_synthetic'][1]:.4f} "
            f"({p['kid_real_val'][0]:.4f}) | {p['chroma_hf_ratio']:.1f} | "
            f"{_f(p['bn_shift_mix'])} ({_f(p['bn_shift_real_only'])}) | {share} |")
    lines += ["", "| generator | variant | R | seeds | test mIoU | paired Δ | 95 % interval | "
              "sd of Δ | detectable Δ | seeds for 0.02 | reading |",
              "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for p in points:
        for r in p["rows"]:
            if r["variant"] == "real":
                lines.append(f"| {p['label']} | real only | 0 | {r['runs']} | "
                             f"{_f(r['miou_mean'])} | | | | | | |")
                continue
            ci = f"[{r['miou_delta_ci'][0]:+.3f}, {r['miou_delta_ci'][1]:+.3f}]" \
                if r["miou_delta_ci"] else ""
            # the reading of the interval by today's rule (results.json may hold an older one)
            r = {**r, "verdict": verdict(*(r["miou_delta_ci"] or (None, None)))}
            lines.append(
                f"| {p['label']} | {r['variant']} | {r['ratio']:g} | {r['runs']} | "
                f"{_f(r['miou_mean'])} | {_f(r['miou_delta'], '+.3f')} | "
                f"{ci} | {_f(r['miou_delta_sd'])} | "
                f"{_f(r['mde'])} | {r['seeds_for_target'] or ''} | {r['verdict'] or ''} |")
    lines += ["", f"Against the {CONTROL} control (real chips in place of the synthetic ones, "
              "the same batches and compute; paired by seed):", "",
              "| generator | variant | R | seeds | Δ vs control | 95 % interval | detectable Δ "
              "| reading |", "|---|---|---:|---:|---:|---|---:|---|"]
    for r in control_rows(points):
        ci = f"[{r['miou_delta_ci'][0]:+.3f}, {r['miou_delta_ci'][1]:+.3f}]" \
            if r["miou_delta_ci"] else ""
        lines.append(f"| {r['label']} | {r['variant']} | {r['ratio']:g} | {r['runs']} | "
                     f"{_f(r['miou_delta'], '+.3f')} | {ci} | {_f(r['mde'])} | "
                     f"{r['verdict']} |")
    return "\n".join(lines) + "\n"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def plot(points: list[dict[str, Any]], path: Path,
         xlabel: str = "generator training, CPU minutes") -> None:
    """Δ per variant with its interval, and the pair figures, against generator CPU minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    a = axes[0, 0]
    x = [p["generator_cpu_minutes"] for p in points]
    variants = dict.fromkeys((r["variant"], r["ratio"]) for p in points for r in p["rows"]
                             if r["miou_delta"] is not None and r["variant"] in PLOTTED)
    for j, (v, ratio) in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for p in points:
            for r in p["rows"]:
                if (r["variant"], r["ratio"]) == (v, ratio) and r["miou_delta_ci"]:
                    xs.append(p["generator_cpu_minutes"] * (1 + 0.04 * (j - 1)))
                    ys.append(r["miou_delta"])
                    lo.append(r["miou_delta"] - r["miou_delta_ci"][0])
                    hi.append(r["miou_delta_ci"][1] - r["miou_delta"])
        a.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=f"{v} R={ratio:g}")
    control = next((r for p in points for r in p["rows"] if r["variant"] == CONTROL
                    and r["miou_delta_ci"]), None)
    if control is not None:
        a.axhspan(*control["miou_delta_ci"], color="grey", alpha=0.2,
                  label=f"{CONTROL} R={control['ratio']:g} (no generator)")
        a.axhline(control["miou_delta"], color="grey", lw=0.8)
    a.axhline(0, color="k", lw=0.8)
    a.axhline(0.02, color="g", lw=0.8, ls="--", label="+0.02 (target)")
    a.set(ylabel="paired Δ test mIoU vs real only (95 %)")
    a.legend(fontsize=7)
    panels = [(axes[0, 1], [p["consistency"] for p in points], "pair consistency (mIoU)",
               points[0]["consistency_real_train"], "real training chips"),
              (axes[1, 0], [p["kid_synthetic"][0] for p in points], "KID on the segmenter's "
               "encoder (lower: closer)", points[0]["kid_real_val"][0], "real val vs train"),
              (axes[1, 1], [p["chroma_hf_ratio"] for p in points], "fine colour noise / real",
               1.0, "real chips")]
    for ax, ys, label, ref, ref_label in panels:
        ax.plot(x, ys, "o-")
        for xi, yi, pt in zip(x, ys, points, strict=True):
            ax.annotate(pt["label"], (xi, yi), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.axhline(ref, color="grey", ls=":", label=ref_label)
        ax.set(ylabel=label)
        ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.set(xscale="log", xlabel=xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path, help="the study's real chip store")
    ap.add_argument("--point", action="append", default=[],
                    help="LABEL:CPU_MINUTES:GENERATOR_DIR:EXPERIMENT_DIR")
    ap.add_argument("--measured", action="append", type=Path, default=[],
                    help="a curve.json of an earlier call: its points join the table and figure")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--xlabel", default="generator training, CPU minutes",
                    help="the x axis (e.g. GPU minutes for scripts/gpu_study.sh)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    points = [p for f in args.measured for p in json.loads(f.read_text())]
    for spec in args.point:
        label, minutes, gen, exp = spec.split(":")
        points.append(measure_point(label, float(minutes), Path(gen), Path(exp), args.dataset))
        print(f"measured {label}", flush=True)
    ours = {"curve.json", "curve.md", "compute_curve.png"}
    if args.out.is_dir() and any(f.name not in ours for f in args.out.iterdir()):
        sys.exit(f"{args.out}: holds files this script did not write; choose a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(points, indent=2) + "\n")
    table = markdown(points)
    (args.out / "curve.md").write_text(table)
    plot(points, args.out / "compute_curve.png", args.xlabel)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
