"""Reports: evaluation (JSON, Markdown, HTML, confusion-matrix PNG) and the experiment's table
and mIoU-vs-ratio plot."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import ClassTable
from satsynth.io import atomic_path, write_json


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def eval_markdown(scores: dict[str, Any], info: dict[str, Any]) -> str:
    """A short Markdown summary: headline scores and a per-class table."""
    src = info.get("dataset") or info.get("image") or "?"
    lines = ["# Segmenter evaluation", "",
             f"Model `{info.get('model')}` ({info.get('arch')}/{info.get('encoder')}) on `{src}`"
             + (f" (split `{info['split']}`)" if info.get("split") else "") + ".", "",
             f"- mIoU: **{_fmt(scores['miou'])}**",
             f"- mean F1: {_fmt(scores['mean_f1'])}",
             f"- overall accuracy: {_fmt(scores['overall_accuracy'])}",
             f"- labeled pixels: {scores['pixels']:,}", "",
             "| class | IoU | F1 | reference pixels |", "|---|---:|---:|---:|"]
    for name, iou, f1, sup in zip(scores["classes"], scores["iou"], scores["f1"],
                                  scores["support"], strict=True):
        lines.append(f"| {name} | {_fmt(iou)} | {_fmt(f1)} | {sup:,} |")
    lines += ["", "Rows of the confusion matrix are the reference, columns the prediction; "
              "unlabeled (ignore) pixels are not counted.", ""]
    return "\n".join(lines)


def eval_html(scores: dict[str, Any], info: dict[str, Any], table: ClassTable,
              confusion_png: str) -> str:
    """A self-contained HTML page with the same content and the confusion-matrix image."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td><span style='display:inline-block;width:12px;height:12px;background:"
        f"{c.hex()}'></span> {e(c.name)}</td><td>{_fmt(iou)}</td><td>{_fmt(f1)}</td>"
        f"<td>{sup:,}</td></tr>"
        for c, iou, f1, sup in zip(table.classes, scores["iou"], scores["f1"], scores["support"],
                                   strict=True))
    src = info.get("dataset") or info.get("image") or "?"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SatSynth evaluation</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>Segmenter evaluation</h1>
<p>Model <code>{e(str(info.get('model')))}</code> ({e(str(info.get('arch')))}/{e(str(info.get('encoder')))})
on <code>{e(str(src))}</code>.</p>
<p>mIoU <b>{_fmt(scores['miou'])}</b> &middot; mean F1 {_fmt(scores['mean_f1'])} &middot;
overall accuracy {_fmt(scores['overall_accuracy'])} &middot; {scores['pixels']:,} labeled pixels</p>
<table><tr><th>class</th><th>IoU</th><th>F1</th><th>reference pixels</th></tr>
{rows}
</table>
<h2>Confusion matrix</h2>
<p>Rows: reference; columns: prediction; each row normalized to 1.</p>
<img src="{e(confusion_png)}" alt="confusion matrix" style="max-width:100%">
</body></html>
"""


def plot_confusion(conf: list[list[int]], names: list[str], path: Path) -> Path:
    """Row-normalized confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(conf, dtype=float)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(names)
    size = max(4.0, 0.8 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(c[i, j]):,}", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_eval_report(scores: dict[str, Any], out: Path, table: ClassTable,
                      info: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md, report.html and confusion.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report_json": out / "report.json", "report_html": out / "report.html",
             "report_md": out / "report.md", "confusion_png": out / "confusion.png"}
    plot_confusion(scores["confusion"], table.names, paths["confusion_png"])
    write_json(paths["report_json"], {**info, **scores, "class_ids": table.ids})
    _write_text(paths["report_md"], eval_markdown(scores, info))
    _write_text(paths["report_html"], eval_html(scores, info, table, "confusion.png"))
    return paths


# --------------------------------------------------------------------------------------------
# experiment


def summarize_runs(runs: list[dict[str, Any]], class_names: list[str]) -> list[dict[str, Any]]:
    """Per ratio: mIoU mean, standard error, per-class IoU means and deltas against R=0."""
    by_r: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        by_r.setdefault(float(r["ratio"]), []).append(r)
    rows = []
    for ratio in sorted(by_r):
        rs = by_r[ratio]
        m = np.array([r["miou"] for r in rs], dtype=float)
        per_class = []
        for k in range(len(class_names)):
            vals = [r["iou"][k] for r in rs if r["iou"][k] is not None]
            per_class.append(float(np.mean(vals)) if vals else None)
        rows.append({"ratio": ratio, "runs": len(rs), "seeds": sorted(r["seed"] for r in rs),
                     "miou_mean": float(m.mean()),
                     "miou_se": float(m.std(ddof=1) / math.sqrt(len(m))) if len(m) > 1 else None,
                     "miou_runs": m.tolist(), "iou_mean": per_class,
                     "synthetic_chips": rs[0].get("synthetic_chips"),
                     "real_chips": rs[0].get("real_chips")})
    base = next((r for r in rows if r["ratio"] == 0.0), None)
    for r in rows:
        if base is None:
            r["iou_delta"] = [None] * len(class_names)
            r["miou_delta"] = None
            continue
        r["miou_delta"] = r["miou_mean"] - base["miou_mean"]
        r["iou_delta"] = [None if a is None or b is None else a - b
                          for a, b in zip(r["iou_mean"], base["iou_mean"], strict=True)]
    return rows


def experiment_markdown(summary: list[dict[str, Any]], class_names: list[str],
                        settings: dict[str, Any]) -> str:
    """The experiment table: mIoU mean +- SE per R and per-class IoU deltas against R=0."""
    def pm(r: dict[str, Any]) -> str:
        se = r["miou_se"]
        return f"{r['miou_mean']:.4f} ± {se:.4f}" if se is not None else f"{r['miou_mean']:.4f}"

    def sgn(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.4f}"

    lines = ["| R | real chips | synthetic chips | runs | mIoU (mean ± SE) | Δ mIoU vs R=0 |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        lines.append(f"| {r['ratio']:g} | {r['real_chips']} | {r['synthetic_chips']} | "
                     f"{r['runs']} | {pm(r)} | {sgn(r['miou_delta'])} |")
    lines += ["", "Per-class IoU change against R=0 (mean over seeds):", "",
              "| R | " + " | ".join(class_names) + " |",
              "|---:|" + "---:|" * len(class_names)]
    for r in summary:
        lines.append(f"| {r['ratio']:g} | " + " | ".join(sgn(v) for v in r["iou_delta"]) + " |")
    base = next((r for r in summary if r["ratio"] == 0.0), None)
    if base:
        lines += ["", "Per-class IoU at R=0: " + ", ".join(
            f"{n} {_fmt(v)}" for n, v in zip(class_names, base["iou_mean"], strict=True)) + "."]
    keys = ("arch", "encoder", "epochs", "budget", "batch_size", "real_fraction", "seeds",
            "generator")
    lines += ["", "Settings: " + ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
              + ".", ""]
    return "\n".join(lines)


def plot_experiment(summary: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """mIoU against the synthetic ratio R with standard-error bars; R=0 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [r["ratio"] for r in summary]
    ys = [r["miou_mean"] * 100 for r in summary]
    es = [(r["miou_se"] or 0.0) * 100 for r in summary]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label="real + synthetic")
    for r in summary:
        ax.scatter([r["ratio"]] * len(r["miou_runs"]), [v * 100 for v in r["miou_runs"]],
                   s=10, color="grey", alpha=0.6, zorder=1)
    base = next((r for r in summary if r["ratio"] == 0.0), None)
    if base:
        ax.axhline(base["miou_mean"] * 100, ls="--", color="k", lw=1, label="real only (R=0)")
    ax.set_xlabel("synthetic pairs per real pair (R)")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_xticks(xs)
    ax.set_title(title or "Augmentation with synthetic pairs")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
