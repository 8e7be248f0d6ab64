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
from dataclasses import asdict, dataclass
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
                          patience=cfg.patience, synthetic_weight=cfg.synthetic_weight).check()


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
    """Run (or resume) the experiment.

    Args:
        dataset: the prepared real chip store (runs select on ``val``, report on ``test``).
        generator: the generator model folder (needed when a ratio is above 0).
        out: the experiment folder (synthetic cache, runs.json, results).
        upsampler: make the synthetic pairs through the super-resolution cascade with this
            upsampler (``generator`` being its base).
        **options: the fields of :class:`ExperimentConfig` (``ratios`` and ``variants`` may be
            comma-separated text).

    Returns:
        ``{"results": results.json, "table": table.md, "plot": plot.png,
        "report_html": report.html}``.
    """
    cfg = experiment_config(options)
    variants = parse_variants(cfg.variants)
    if upsampler is not None and generator is None:
        raise SatSynthError("--upsampler needs --generator: the cascade's base generator")
    up = Path(upsampler) if upsampler is not None else None
    if up is not None and not up.is_dir():
        raise SatSynthError("upsampler model folder not found", up)
    out = check_output(out, "experiment", inputs=[dataset, generator, upsampler], into=True)
    plan = plan_experiment(cfg, variants, ChipStore(dataset), out, generator, up)
    _run_all(plan)
    return _write_results(plan, generator, up)


def experiment_config(options: dict[str, Any]) -> ExperimentConfig:
    """The experiment's settings from keyword arguments, checked before any work (one line).

    Args:
        options: the fields of :class:`ExperimentConfig` (``ratios`` and ``variants`` may be
            comma-separated text; both are normalized in ``options``).

    Returns:
        The checked :class:`ExperimentConfig`.
    """
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
    return cfg


@dataclass
class ExperimentPlan:
    """Everything the runs of an experiment share: the settings, the real chips (``n_real``
    of them train), the validation cadence ``every``, the training options of the budget, the
    synthetic stores, the identity of its runs (``key``, the generator's fingerprint), the
    planned runs (seed, variant, R) and the records of those already done (runs.json)."""

    cfg: ExperimentConfig
    real: ChipStore
    out: Path
    n_real: int
    every: int
    train_opts: dict[str, Any]
    syn_stores: list[Path]
    variants: dict[str, Variant]
    key: str
    gen_fp: str | None
    runs: list[tuple[int, str, float]]
    records: list[dict[str, Any]]
    keep_baseline: bool

    def run_key(self, variant: str) -> str:
        """The identity of a variant's runs: the training key, plus the variant's own."""
        v = self.variants.get(variant)
        return self.key + (f"-{v.key.format(**asdict(self.cfg))}" if v is not None and v.key
                           else "")

    def find(self, seed: int, variant: str, r: float) -> dict[str, Any] | None:
        """The record of a run already done with the same settings, or None."""
        for rec in self.records:
            if (rec["seed"] == seed and float(rec["ratio"]) == r
                    and rec.get("variant", "mix" if r > 0 else BASELINE) == variant
                    and rec["train_key"] == self.run_key(variant)
                    and (r == 0 or rec.get("generator_fingerprint") == self.gen_fp)):
                return rec
        return None

    def model_dir(self, seed: int, variant: str, r: float) -> Path:
        """Where a run's segmenter is written."""
        return self.out / "runs" / f"{variant}-R{r:g}-seed{seed}-{self.run_key(variant)}"


def plan_experiment(cfg: ExperimentConfig, variants: list[Variant], real: ChipStore, out: Path,
                    generator: str | Path | None, up: Path | None) -> ExperimentPlan:
    """The experiment's plan; makes the synthetic pairs it needs and are not cached yet.

    Args:
        cfg: the checked settings.
        variants: the variants to run (:func:`parse_variants`).
        real: the real chip store.
        out: the experiment folder.
        generator: the generator model folder (needed when a ratio is above 0).
        up: the cascade's upsampler folder, or None.

    Returns:
        The :class:`ExperimentPlan`.
    """
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
    gen_fp = (_generator_fingerprint(Path(generator), up) if max_r > 0 and generator
              else None)
    records: list[dict[str, Any]] = read_json(runs_path) if runs_path.is_file() else []
    runs: list[tuple[int, str, float]] = []
    for seed in range(cfg.seeds):
        runs.append((seed, BASELINE, 0.0))
        for v in variants:
            rs = [max_r] if v.max_ratio_only else [r for r in cfg.ratios if r > 0]
            runs += [(seed, v.name, r) for r in rs if r > 0]
    keep_baseline = cfg.keep_models or any(v.needs_baseline_model for v in variants)
    return ExperimentPlan(cfg, real, out, n_real, every, train_opts, syn_stores,
                          {v.name: v for v in variants}, cfg.train_key(), gen_fp, runs, records,
                          keep_baseline)


def _run_all(plan: ExperimentPlan) -> None:
    """Train and score every planned run not done yet, recording each in runs.json as it ends."""
    cfg = plan.cfg
    todo = [p for p in plan.runs if plan.find(*p) is None]
    log.info("experiment: %d runs, %d already done, %d to do (%d real chips, R in %s, variants "
             "%s, budget %s)", len(plan.runs), len(plan.runs) - len(todo), len(todo),
             plan.n_real, cfg.ratios, ", ".join(cfg.variants), cfg.budget)
    with progress.task("experiment", total=len(plan.runs), unit="run",
                       initial=len(plan.runs) - len(todo)) as bar:
        for seed, variant, r in todo:
            rec = _run_one(plan, seed, variant, r)
            plan.records.append(rec)
            write_json(plan.out / "runs.json", plan.records)
            if not (cfg.keep_models or (plan.keep_baseline and variant == BASELINE)):
                shutil.rmtree(plan.model_dir(seed, variant, r), ignore_errors=True)
            bar.update(1, message=f"{variant} R={r:g} seed {seed}: {rec['reported_on']} mIoU "
                                  f"{rec['miou']:.3f}", force=True)
    if plan.keep_baseline and not cfg.keep_models:
        for seed in range(cfg.seeds):
            shutil.rmtree(plan.model_dir(seed, BASELINE, 0.0), ignore_errors=True)


def _run_one(plan: ExperimentPlan, seed: int, variant: str, r: float) -> dict[str, Any]:
    """Train one run's segmenter, score it on the held-out chips; returns its record."""
    from satsynth.segmenter.train import train_segmenter

    cfg = plan.cfg
    v: Variant | None = plan.variants.get(variant)
    stores = [str(s) for s in plan.syn_stores] if r > 0 else None
    if v is not None and v.pool is not None:
        base_dir = plan.model_dir(seed, BASELINE, 0.0)
        stores = v.pool(PoolContext(plan.real.path, stores or [], plan.out, seed, r,
                                    base_dir if base_dir.is_dir() else None, asdict(cfg)))
    mode = v.mode if v is not None else "mix"
    extra = v.run_options(asdict(cfg)) if v is not None and r > 0 else {}
    mdir = plan.model_dir(seed, variant, r)
    res = train_segmenter(
        plan.real.path, mdir, synthetic=stores, ratio=r, arch=cfg.arch,
        encoder=cfg.encoder, encoder_weights=cfg.encoder_weights,
        batch_size=cfg.batch_size, lr=cfg.lr, dice=cfg.dice,
        class_weights=cfg.class_weights, real_fraction=cfg.real_fraction,
        minutes=cfg.minutes_per_run, seed=seed, device=cfg.device,
        synthetic_mode="pretrain" if mode == "pretrain" else "mix",
        synthetic_only=mode == "synthetic-only", **plan.train_opts, **extra)
    m = read_json(res["metrics"])
    # the final evaluation: this run's training and selection are over
    scores, reported_on = final_scores(mdir, plan.real.path, cfg.device)
    return {"variant": variant, "mode": mode, "ratio": r, "seed": seed,
            "train_key": plan.run_key(variant),
            "generator_fingerprint": plan.gen_fp if r > 0 else None,
            "miou": scores["miou"], "iou": scores["iou"],
            "overall_accuracy": scores["overall_accuracy"], "reported_on": reported_on,
            "val_miou": m["miou"], "val_iou": m["validation"]["iou"],
            "real_chips": m["real_chips"], "synthetic_chips": m["synthetic_chips"],
            "best_epoch": m["best_epoch"], "best_step": m.get("best_step"),
            "epochs_run": len(m["history"]), "steps": m.get("steps", sum(
                h["steps"] for h in m["history"])),
            "seconds": m["seconds"], "stopped": m["stopped"],
            "model": str(mdir) if cfg.keep_models else None}


def _write_results(plan: ExperimentPlan, generator: str | Path | None,
                   up: Path | None) -> dict[str, Any]:
    """results.json, table.md, plot.png and report.html over every run of the plan."""
    from satsynth.workflows.report import experiment_html, experiment_markdown, plot_experiment

    cfg, out = plan.cfg, plan.out
    done = [d for d in (plan.find(*p) for p in plan.runs) if d is not None]
    names = plan.real.classes.names
    summary = paired_summary(done, names)
    settings = {**asdict(cfg), "generator": str(generator) if generator else None,
                "upsampler": str(up) if up else None,
                "dataset": str(plan.real.path), "train_key": plan.key, "protocol": PROTOCOL,
                "val_every": plan.every if cfg.budget != "epochs" else None}
    results = out / "results.json"
    write_json(results, {"settings": settings, "classes": names, "summary": summary,
                         "runs": done})
    table = out / "table.md"
    markdown = experiment_markdown(summary, names, settings)
    with atomic_path(table) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    title = (f"{cfg.arch}/{cfg.encoder}, {plan.n_real} real chips"
             + (f" ({cfg.real_fraction:g} of train)" if cfg.real_fraction < 1 else ""))
    plot = plot_experiment(summary, out / "plot.png", title)
    report = out / "report.html"
    with atomic_path(report) as tmp:
        tmp.write_text(experiment_html(markdown, plot.name, title), encoding="utf-8")
    return {"results": str(results), "table": str(table), "plot": str(plot),
            "report_html": str(report)}
