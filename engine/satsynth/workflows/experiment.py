"""The augmentation experiment (the paper's figure 5): for each ratio R, variant and seed, train
a segmenter on real + R |D| synthetic pairs, select it on the real validation chips and report it
on the held-out test chips, as a paired difference to the real-only run of the same seed
(:mod:`satsynth.workflows.protocol`).

Resumable: synthetic pairs are cached in ``EXP_DIR/synthetic/`` and every finished run is
recorded in ``EXP_DIR/runs.json``; running the same command again only does what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from satsynth import contract, progress
from satsynth.contract import BUDGETS, ExperimentFields
from satsynth.data.store import ChipStore
from satsynth.errors import SatSynthError
from satsynth.generator.sample import synthesize
from satsynth.io import atomic_path, read_json, write_json
from satsynth.outputs import check_output
from satsynth.segmenter.mixing import check_compatible, epoch_batches, real_subset
from satsynth.workflows.protocol import (
    BASELINE,
    PoolContext,
    Variant,
    final_scores,
    paired_summary,
    parse_variants,
)

log = logging.getLogger("satsynth")

# BUDGETS (contract), ``--budget``: ``steps`` (every run makes the optimizer steps of --epochs
# over the real chips alone), ``epochs`` (--epochs passes, validated after each), ``converge``
# (every run trains until the val mIoU has not improved for --patience validations, validated
# every N steps with the same N for every R, at a constant learning rate after warm-up; at most
# --epochs passes; then the same end of training for every run: ``experiment_train_options``).
# In every budget a mixed batch holds the real chips of the real-only run's batch with the
# synthetic chips on top, so every R sees the same real chips at every step.
#: Version of the run protocol (runs of an older protocol are not mixed in). 3: synthetic chips
#: on top of the real ones, pretrain fine-tuning with the real-only budget, converge annealed and
#: averaged at its end.
PROTOCOL = 3


def experiment_train_options(budget: str, epochs: int, real_epoch: int, every: int,
                             patience: int) -> dict[str, Any]:
    """The training options that make a budget, the same for every R and variant, in passes
    over the real chips (``real_epoch`` optimizer steps each): ``steps`` --epochs passes;
    ``converge`` at a constant learning rate until the validation mIoU has not improved for
    ``patience`` validations (every ``every`` steps), at most --epochs passes, then an anneal of
    ``patience`` validations' steps (cosine to 0) whose weight average is the model reported,
    not the best of noisy validations; ``epochs`` --epochs passes validated after each."""
    opts: dict[str, Any] = {"epochs": epochs, "synthetic_on_top": True}
    if budget == "steps":
        opts.update(max_steps=epochs * real_epoch, val_every=every,
                    patience_steps=patience * every)
    elif budget == "converge":
        opts.update(max_steps=epochs * real_epoch, val_every=every,
                    patience_steps=max(patience, 1) * every, lr_schedule="constant",
                    anneal_steps=max(patience, 1) * every)
    else:
        opts.update(patience=patience)
    return opts


def _check_run_options(cfg: ExperimentFields) -> None:
    """Refuse, before any work, segmenter options that every run would refuse (one line)."""
    from satsynth.segmenter.train import SegmenterTrainOptions

    SegmenterTrainOptions(arch=cfg.arch, encoder=cfg.encoder, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, lr=cfg.lr, class_weights=cfg.class_weights,
                          real_fraction=cfg.real_fraction, minutes=cfg.minutes_per_run,
                          patience=cfg.patience).check()


class ExperimentConfig(ExperimentFields):
    """What the experiment runs (the fields and defaults of
    :class:`satsynth.contract.ExperimentFields`); everything that changes a run's result is in
    its key."""

    def train_key(self) -> str:
        """A short hash of every option that affects training."""
        keys = ("real_fraction", "arch", "encoder", "epochs", "budget", "batch_size", "lr",
                "dice", "class_weights", "patience", "minutes_per_run", "val_every")
        fields = {k: getattr(self, k) for k in keys}
        if self.encoder_weights:  # absent when random: the keys of earlier runs stay valid
            fields["encoder_weights"] = self.encoder_weights
        blob = json.dumps({"protocol": PROTOCOL, **fields}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def parse_ratios(text: str | list[float]) -> list[float]:
    """:func:`satsynth.contract.parse_ratios` ('0,1,2.5' -> [0.0, 1.0, 2.5]), a problem as a
    :class:`SatSynthError`."""
    try:
        return contract.parse_ratios(text)
    except contract.ContractError as exc:
        raise SatSynthError(str(exc)) from None


def _generator_fingerprint(generator: Path, upsampler: Path | None = None) -> str:
    """What the synthetic pool depends on: the generator's (and the cascade's upsampler's)
    config and weights; a change in either makes the pool again."""
    from satsynth.checkpoint import model_fingerprint

    return model_fingerprint([f for f in (generator, upsampler) if f is not None], "files",
                             length=12)


def ensure_synthetic(real: ChipStore, generator: Path, cache: Path, needed: int,
                     cfg: ExperimentConfig, upsampler: Path | None = None) -> list[Path]:
    """Synthetic stores holding at least ``needed`` chips, synthesizing only what is missing
    (through the super-resolution cascade when ``upsampler`` is given)."""
    if needed <= 0:
        return []
    index_path = cache / "cache.json"
    fp = _generator_fingerprint(generator, upsampler)
    index = read_json(index_path) if index_path.is_file() else {"parts": []}
    if index.get("generator_fingerprint") not in (None, fp):
        log.warning("the generator changed since the synthetic chips in %s were made: "
                    "synthesizing them again", cache)
        for p in index["parts"]:
            shutil.rmtree(cache / p["folder"], ignore_errors=True)
        index = {"parts": []}
    parts = [p for p in index["parts"] if (cache / p["folder"] / "dataset.json").is_file()]
    have = sum(p["count"] for p in parts)
    if have < needed:
        count = needed - have
        seed = 1000 + len(parts)
        folder = f"part-{len(parts):03d}"
        log.info("synthesizing %d pairs with %s%s into %s", count, generator,
                 f" and the upsampler {upsampler}" if upsampler else "", cache / folder)
        synthesize(generator, count, cache / folder, sampler=cfg.sampler, steps=cfg.steps,
                   seed=seed, device=cfg.device, batch_size=cfg.synth_batch_size,
                   upsampler=upsampler)
        made = len(ChipStore(cache / folder).split("train"))
        parts.append({"folder": folder, "count": made, "seed": seed})
        write_json(index_path, {"generator": str(generator),
                                "upsampler": str(upsampler) if upsampler else None,
                                "generator_fingerprint": fp,
                                "sampler": cfg.sampler, "steps": cfg.steps, "parts": parts})
    stores = [cache / p["folder"] for p in parts]
    for s in stores:
        check_compatible(real, ChipStore(s))
    return stores


def run_experiment(dataset: str | Path, generator: str | Path | None, out: str | Path,
                   upsampler: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Run (or resume) the experiment; ``options`` are :class:`ExperimentConfig` fields;
    ``upsampler`` makes the synthetic pairs through the super-resolution cascade. Returns ``{"results": json, "table": md, "plot": png, "report_html": html}``."""
    from satsynth.segmenter.train import train_segmenter
    from satsynth.workflows.report import experiment_html, experiment_markdown, plot_experiment

    if "ratios" in options:
        options["ratios"] = parse_ratios(options["ratios"])
    if isinstance(options.get("variants"), str):
        options["variants"] = [v.name for v in parse_variants(options["variants"])]
    try:
        cfg = ExperimentConfig(**options)
    except TypeError as exc:
        raise SatSynthError(f"bad experiment option: {exc}") from None
    if cfg.budget not in BUDGETS:
        raise SatSynthError(f"--budget must be one of {', '.join(BUDGETS)}, got {cfg.budget!r}")
    if cfg.seeds < 1:
        raise SatSynthError(f"--seeds must be >= 1, got {cfg.seeds}")
    if not 0 < cfg.filter_keep <= 1:
        raise SatSynthError(f"--filter-keep must be a fraction in (0, 1], got {cfg.filter_keep}")
    _check_run_options(cfg)
    variants = parse_variants(cfg.variants)
    if upsampler is not None and generator is None:
        raise SatSynthError("--upsampler needs --generator: the cascade's base generator")
    up = Path(upsampler) if upsampler is not None else None
    if up is not None and not up.is_dir():
        raise SatSynthError("upsampler model folder not found", up)
    out = check_output(out, "experiment", inputs=[dataset, generator, upsampler], into=True)
    real = ChipStore(dataset)
    n_real = len(real_subset(real.count("train"), cfg.real_fraction, 0))
    # the same validation cadence N (optimizer steps) for every R and variant: by default one
    # pass over the real chips alone, so R > 0 runs are not checked less often
    real_epoch = len(epoch_batches(n_real, cfg.batch_size, np.random.default_rng(0)))
    every = cfg.val_every or real_epoch
    max_r = max(cfg.ratios)
    train_opts = experiment_train_options(cfg.budget, cfg.epochs, real_epoch, every, cfg.patience)
    per_real = cfg.count_per_real if cfg.count_per_real is not None else max_r
    if max_r > 0 and per_real < max_r:
        log.warning("--count-per-real %g < largest ratio %g: synthetic chips will repeat",
                    per_real, max_r)
    syn_stores: list[Path] = []
    if max_r > 0:
        if generator is None:
            raise SatSynthError("ratios above 0 need --generator MODEL_DIR")
        gen = Path(generator)
        if not gen.is_dir():
            raise SatSynthError("generator model folder not found", gen)
        out.mkdir(parents=True, exist_ok=True)
        syn_stores = ensure_synthetic(real, gen, out / "synthetic",
                                      int(math.ceil(per_real * n_real)), cfg, up)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.json"
    key = cfg.train_key()
    gen_fp = (_generator_fingerprint(Path(generator), up) if max_r > 0 and generator
              else None)
    records: list[dict[str, Any]] = read_json(runs_path) if runs_path.is_file() else []
    by_name = {v.name: v for v in variants}
    plan: list[tuple[int, str, float]] = []
    for seed in range(cfg.seeds):
        plan.append((seed, BASELINE, 0.0))
        for v in variants:
            rs = [max_r] if v.max_ratio_only else [r for r in cfg.ratios if r > 0]
            plan += [(seed, v.name, r) for r in rs if r > 0]
    keep_baseline = cfg.keep_models or any(v.needs_baseline_model for v in variants)

    def run_key(variant: str) -> str:
        v = by_name.get(variant)
        return key + (f"-{v.key.format(**asdict(cfg))}" if v is not None and v.key else "")

    def find(seed: int, variant: str, r: float) -> dict[str, Any] | None:
        for rec in records:
            if (rec["seed"] == seed and float(rec["ratio"]) == r
                    and rec.get("variant", "mix" if r > 0 else BASELINE) == variant
                    and rec["train_key"] == run_key(variant)
                    and (r == 0 or rec.get("generator_fingerprint") == gen_fp)):
                return rec
        return None

    def model_dir(seed: int, variant: str, r: float) -> Path:
        return out / "runs" / f"{variant}-R{r:g}-seed{seed}-{run_key(variant)}"

    todo = [p for p in plan if find(*p) is None]
    log.info("experiment: %d runs, %d already done, %d to do (%d real chips, R in %s, variants "
             "%s, budget %s)", len(plan), len(plan) - len(todo), len(todo), n_real, cfg.ratios,
             ", ".join(cfg.variants), cfg.budget)
    with progress.task("experiment", total=len(plan), unit="run",
                       initial=len(plan) - len(todo)) as bar:
        for seed, variant, r in todo:
            v: Variant | None = by_name.get(variant)
            stores = [str(s) for s in syn_stores] if r > 0 else None
            if v is not None and v.pool is not None:
                base_dir = model_dir(seed, BASELINE, 0.0)
                stores = v.pool(PoolContext(real.path, stores or [], out, seed, r,
                                            base_dir if base_dir.is_dir() else None,
                                            asdict(cfg)))
            mode = v.mode if v is not None else "mix"
            mdir = model_dir(seed, variant, r)
            res = train_segmenter(
                real.path, mdir, synthetic=stores, ratio=r, arch=cfg.arch,
                encoder=cfg.encoder, encoder_weights=cfg.encoder_weights,
                batch_size=cfg.batch_size, lr=cfg.lr, dice=cfg.dice,
                class_weights=cfg.class_weights, real_fraction=cfg.real_fraction,
                minutes=cfg.minutes_per_run, seed=seed, device=cfg.device,
                synthetic_mode="pretrain" if mode == "pretrain" else "mix",
                synthetic_only=mode == "synthetic-only", **train_opts)
            m = read_json(res["metrics"])
            # the final evaluation: this run's training and selection are over
            scores, reported_on = final_scores(mdir, real.path, cfg.device)
            rec = {"variant": variant, "mode": mode, "ratio": r, "seed": seed,
                   "train_key": run_key(variant),
                   "generator_fingerprint": gen_fp if r > 0 else None,
                   "miou": scores["miou"], "iou": scores["iou"],
                   "overall_accuracy": scores["overall_accuracy"], "reported_on": reported_on,
                   "val_miou": m["miou"], "val_iou": m["validation"]["iou"],
                   "real_chips": m["real_chips"], "synthetic_chips": m["synthetic_chips"],
                   "best_epoch": m["best_epoch"], "best_step": m.get("best_step"),
                   "epochs_run": len(m["history"]), "steps": m.get("steps", sum(
                       h["steps"] for h in m["history"])),
                   "seconds": m["seconds"], "stopped": m["stopped"],
                   "model": str(mdir) if cfg.keep_models else None}
            records.append(rec)
            write_json(runs_path, records)
            if not (cfg.keep_models or (keep_baseline and variant == BASELINE)):
                shutil.rmtree(mdir, ignore_errors=True)
            bar.update(1, message=f"{variant} R={r:g} seed {seed}: {reported_on} mIoU "
                                  f"{rec['miou']:.3f}", force=True)
    if keep_baseline and not cfg.keep_models:
        for seed in range(cfg.seeds):
            shutil.rmtree(model_dir(seed, BASELINE, 0.0), ignore_errors=True)
    done = [d for d in (find(*p) for p in plan) if d is not None]
    names = real.classes.names
    summary = paired_summary(done, names)
    settings = {**asdict(cfg), "generator": str(generator) if generator else None,
                "upsampler": str(up) if up else None,
                "dataset": str(real.path), "train_key": key, "protocol": PROTOCOL,
                "val_every": every if cfg.budget != "epochs" else None}
    results = out / "results.json"
    write_json(results, {"settings": settings, "classes": names, "summary": summary,
                         "runs": done})
    table = out / "table.md"
    markdown = experiment_markdown(summary, names, settings)
    with atomic_path(table) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    title = (f"{cfg.arch}/{cfg.encoder}, {n_real} real chips"
             + (f" ({cfg.real_fraction:g} of train)" if cfg.real_fraction < 1 else ""))
    plot = plot_experiment(summary, out / "plot.png", title)
    report = out / "report.html"
    with atomic_path(report) as tmp:
        tmp.write_text(experiment_html(markdown, plot.name, title), encoding="utf-8")
    return {"results": str(results), "table": str(table), "plot": str(plot),
            "report_html": str(report)}
