"""The evaluation report: JSON, Markdown, HTML and the confusion-matrix PNG."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.data.classes import ClassTable
from satsynth.io import atomic_path, write_json


def fmt_score(v: float | None, digits: int = 3) -> str:
    """A score with ``digits`` decimals, or "n/a" when there is none."""
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
             f"- mIoU: **{fmt_score(scores['miou'])}**",
             f"- mean F1: {fmt_score(scores['mean_f1'])}",
             f"- overall accuracy: {fmt_score(scores['overall_accuracy'])}",
             f"- labeled pixels: {scores['pixels']:,}", "",
             "| class | IoU | F1 | reference pixels |", "|---|---:|---:|---:|"]
    for name, iou, f1, sup in zip(scores["classes"], scores["iou"], scores["f1"],
                                  scores["support"], strict=True):
        lines.append(f"| {name} | {fmt_score(iou)} | {fmt_score(f1)} | {sup:,} |")
    lines += ["", "Rows of the confusion matrix are the reference, columns the prediction; "
              "unlabeled (ignore) pixels are not counted.", ""]
    return "\n".join(lines)


def eval_html(scores: dict[str, Any], info: dict[str, Any], table: ClassTable,
              confusion_png: str) -> str:
    """A self-contained HTML page with the same content and the confusion-matrix image."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td><span style='display:inline-block;width:12px;height:12px;background:"
        f"{c.hex()}'></span> {e(c.name)}</td><td>{fmt_score(iou)}</td><td>{fmt_score(f1)}</td>"
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
<p>mIoU <b>{fmt_score(scores['miou'])}</b> &middot; mean F1 {fmt_score(scores['mean_f1'])} &middot;
overall accuracy {fmt_score(scores['overall_accuracy'])} &middot; {scores['pixels']:,} labeled pixels</p>
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
