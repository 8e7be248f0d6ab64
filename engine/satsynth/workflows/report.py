"""The experiment's report: its table, the mIoU-vs-ratio plot and the HTML page holding both."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from satsynth.io import atomic_path
from satsynth.segmenter.report import fmt_score
from satsynth.workflows.protocol import POWER, TARGET_DIFFERENCE


def _ci(ci: list[float | None] | None) -> str:
    return "n/a (1 seed)" if not ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


#: What the power columns of the table mean (table.md and the HTML report).
POWER_NOTE = (
    f"Detectable Δ: the smallest true paired difference the experiment would have found (95 % "
    f"two-sided t-test, {POWER:.0%} power) with its seeds and the spread of their differences; "
    f"Seeds for ±{TARGET_DIFFERENCE:g}: the paired seeds that would detect a difference of "
    f"{TARGET_DIFFERENCE:g} at that spread. Reading: **better** / **worse** when the 95 % "
    f"interval excludes 0; **no difference of {TARGET_DIFFERENCE:g} or more** when the whole "
    f"interval lies within ±{TARGET_DIFFERENCE:g}; **cannot tell** when it contains 0 and "
    f"reaches ±{TARGET_DIFFERENCE:g} or beyond (too few seeds for their spread: this is not "
    f"evidence of no effect).")


def power_cells(row: dict[str, Any]) -> str:
    """The paired Δ, its interval, the detectable Δ, the seeds for ±0.02 and the reading of one
    summary row, as table cells ('| a | b | ... |')."""
    mde = row.get("mde")
    need = row.get("seeds_for_target")
    delta = "n/a" if row["miou_delta"] is None else f"{row['miou_delta']:+.4f}"
    return (f"{delta} | {_ci(row['miou_delta_ci'])} | "
            + ("n/a" if mde is None else f"{mde:.4f}") + " | "
            + ("n/a" if need is None else str(need)) + f" | {row.get('verdict', '')} |")


def experiment_markdown(summary: list[dict[str, Any]], class_names: list[str],
                        settings: dict[str, Any]) -> str:
    """The experiment table (one row per variant and R, from
    :func:`satsynth.workflows.protocol.paired_summary`): reported mIoU, the paired difference to
    R=0 with its 95 % interval, its power (the minimum detectable difference, the seeds that would
    detect 0.02, the reading: :func:`satsynth.workflows.protocol.verdict`), the selection (val)
    mIoU, and per-class IoU differences."""
    def pm(r: dict[str, Any]) -> str:
        se = r["miou_se"]
        return f"{r['miou_mean']:.4f} ± {se:.4f}" if se is not None else f"{r['miou_mean']:.4f}"

    def sgn(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.4f}"

    split = summary[0]["reported_on"] if summary else "test"
    lines = [f"mIoU on the **{split}** split (selection of epochs / early stopping on val"
             + (")." if split == "test" else "; the dataset has no test split, so the reported "
                "split is also the selection split)."), "",
             f"| variant | R | real chips | synthetic chips | seeds | {split} mIoU (mean ± SE) | "
             f"paired Δ vs R=0 | 95 % interval (t) | detectable Δ | seeds for ±{TARGET_DIFFERENCE:g} | "
             "reading | "
             "val mIoU | steps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in summary:
        lines.append(f"| {r['variant']} | {r['ratio']:g} | {r['real_chips']} | "
                     f"{r['synthetic_chips']} | {r['runs']} | {pm(r)} | "
                     + ("| | | | |" if r["variant"] == "real" else power_cells(r)) + " "
                     + f"{fmt_score(r['val_miou_mean'], 4)} | {r['steps_mean']:.0f} |")
    lines += ["", POWER_NOTE]
    tstr = [r for r in summary if r.get("ratio_to_real") is not None]
    for r in tstr:
        lines += ["", f"TSTR ({r['variant']}, R={r['ratio']:g}: synthetic pairs only, scored on "
                  f"real chips): {r['ratio_to_real']:.1%} of the real-only mIoU"
                  + (f" (95 % interval {r['ratio_to_real_ci'][0]:.1%} to "
                     f"{r['ratio_to_real_ci'][1]:.1%})" if r.get("ratio_to_real_ci") else "")
                  + "."]
    if any(r["variant"] != "real" for r in summary):
        lines += ["", "Per-class IoU change against R=0 (mean paired difference over seeds):", "",
                  "| variant | R | " + " | ".join(class_names) + " |",
                  "|---|---:|" + "---:|" * len(class_names)]
    for r in summary:
        if r["variant"] != "real":
            lines.append(f"| {r['variant']} | {r['ratio']:g} | "
                         + " | ".join(sgn(v) for v in r["iou_delta"]) + " |")
    base = next((r for r in summary if r["variant"] == "real"), None)
    if base:
        lines += ["", "Per-class IoU at R=0: " + ", ".join(
            f"{n} {fmt_score(v)}" for n, v in zip(class_names, base["iou_mean"], strict=True)) + "."]
    keys = ("arch", "encoder", "epochs", "budget", "batch_size", "real_fraction", "seeds",
            "variants", "val_every", "generator", "upsampler", "protocol")
    lines += ["", "Settings: " + ", ".join(f"{k}={settings[k]}" for k in keys
                                           if settings.get(k) is not None)
              + ".", ""]
    return "\n".join(lines)


def plot_experiment(summary: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Left: reported mIoU against R per variant (individual seeds in grey, R=0 dashed). Right:
    the paired difference to R=0 with its 95 % interval, per variant and R."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    base = next((r for r in summary if r["variant"] == "real"), None)
    variants = [v for v in dict.fromkeys(r["variant"] for r in summary) if v != "real"]
    split = summary[0]["reported_on"] if summary else "test"
    for k, v in enumerate(variants):
        rows = [r for r in summary if r["variant"] == v]
        alone = rows[0]["mode"] == "synthetic-only"  # not a curve from R=0: a point of its own
        if base is not None and not alone:
            rows = [base] + rows
        xs = [r["ratio"] for r in rows]
        ax.errorbar(xs, [r["miou_mean"] * 100 for r in rows],
                    yerr=[(r["miou_se"] or 0.0) * 100 for r in rows], marker="s" if alone else "o",
                    ls="none" if alone else "-", capsize=4, color=f"C{k}",
                    label=f"{v} (synthetic only)" if alone else v)
        own = [r for r in rows if r["variant"] == v and r["miou_delta"] is not None]
        off = (k - (len(variants) - 1) / 2) * 0.08
        for r in own:
            lo, hi = r["miou_delta_ci"] or (r["miou_delta"], r["miou_delta"])
            bx.errorbar([r["ratio"] + off], [r["miou_delta"] * 100],
                        yerr=[[(r["miou_delta"] - lo) * 100], [(hi - r["miou_delta"]) * 100]],
                        marker="o", capsize=4, color=f"C{k}", label=v if r is own[0] else None)
    for r in summary:
        ax.scatter([r["ratio"]] * len(r["miou_runs"]), [x * 100 for x in r["miou_runs"]],
                   s=10, color="grey", alpha=0.6, zorder=1)
    if base:
        ax.axhline(base["miou_mean"] * 100, ls="--", color="k", lw=1, label="real only (R=0)")
    bx.axhline(0, color="k", lw=1)
    ax.set_xticks(sorted({r["ratio"] for r in summary}))
    bx.set_xticks(sorted({r["ratio"] for r in summary if r["variant"] != "real"}))
    ax.set_xlabel("synthetic pairs per real pair (R)")
    ax.set_ylabel(f"{split} mIoU (%)")
    ax.set_title(title or "Augmentation with synthetic pairs")
    bx.set_xlabel("synthetic pairs per real pair (R)")
    bx.set_ylabel("Δ mIoU vs R=0 (points)")
    bx.set_title("paired difference to real only, 95 % interval")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _inline_html(text: str) -> str:
    """Escaped text with the Markdown the reports use: **bold** and `code`."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def markdown_to_html(markdown: str) -> str:
    """The reports' Markdown (paragraphs, pipe tables, **bold**, `code`) as HTML, so that the
    HTML page shows exactly what table.md says."""
    parts: list[str] = []
    para: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if para:
            parts.append("<p>" + _inline_html(" ".join(para)) + "</p>")
            para.clear()
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(
                set(c.strip()) <= set("-:") for c in r)]
            parts.append("<table><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head)
                         + "</tr>" + "".join("<tr>" + "".join(
                             f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in body)
                         + "</table>")
            rows.clear()

    for line in markdown.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            if para:
                flush()
            rows.append([c.strip() for c in s[1:-1].split("|")])
        elif not s:
            flush()
        else:
            if rows:
                flush()
            para.append(s.lstrip("# ") if s.startswith("#") else s)
    flush()
    return "\n".join(parts)


def experiment_html(markdown: str, plot_png: str, title: str) -> str:
    """The experiment's self-contained HTML report: the table (``markdown``, as in table.md) and
    the plot, for QGIS's Results Viewer or a browser."""
    e = html.escape
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SatSynth experiment</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>Does synthetic data help?</h1>
<p>{e(title)}</p>
<img src="{e(plot_png)}" alt="mIoU against the synthetic ratio R" style="max-width:100%">
{markdown_to_html(markdown)}
</body></html>
"""
