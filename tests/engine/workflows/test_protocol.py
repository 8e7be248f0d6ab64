"""The experiment protocol: the held-out test split, low-data subsets, budget-driven learning-rate
schedules, step-counted early stopping, paired seeds, synthetic modes (pretrain, TSTR) and the
paired-difference statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from affine import Affine
from builders import make_store, stand_in_generator
from rasters import write_raster

from satsynth.data.store import ChipStore, ChipStoreWriter
from satsynth.errors import SatSynthError

TINY = {"arch": "tiny", "encoder": "w4d1", "batch_size": 8, "device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_thread")


def with_test_split(path, n_train=64, n_val=16, n_test=12, seed=0):
    """A brightness-separable store (builders.make_store) plus a test split."""
    base = make_store(path.with_name(path.name + "-base"), n_train, n_val, seed=seed)
    store = ChipStore(base)
    test = make_store(path.with_name(path.name + "-test"), n_test, 1, seed=seed + 1)
    t = ChipStore(test).split("train")
    splits = {"train": store.split("train"), "val": store.split("val"), "test": t}
    with ChipStoreWriter(path, store.meta, {k: len(v) for k, v in splits.items()},
                         write_index=False) as w:
        for name, arr in splits.items():
            for i in range(len(arr)):
                w.add(name, arr.images[i], arr.labels[i], arr.transforms[i])
    return path


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return with_test_split(tmp_path_factory.mktemp("protocol") / "ds")


class SplitSpy:
    """Records every split the data layer opens: (store path, split, final_evaluation, phase)."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.phase = "outside"
        original = ChipStore.split

        def split(store, name, *, final_evaluation=False):
            self.calls.append((str(store.path), name, final_evaluation, self.phase))
            return original(store, name, final_evaluation=final_evaluation)

        monkeypatch.setattr(ChipStore, "split", split)

    def test_reads(self):
        return [c for c in self.calls if c[1] == "test"]


# --------------------------------------------------------------------------------------------
# the test split


def test_test_split_is_locked_in_the_data_layer(ds):
    store = ChipStore(ds)
    with pytest.raises(SatSynthError, match="held out for the final evaluation"):
        store.split("test")
    assert store.count("test") == 12 and len(store) == 64 + 16 + 12  # sizes without reading
    assert len(store.split("test", final_evaluation=True)) == 12


def test_training_and_selection_never_open_the_test_split(ds, syn, tmp_path, monkeypatch):
    """Through the data layer: every split any code opens is recorded, during each training run
    (training and selection) and outside; the test split is opened only after a run is over,
    by the final evaluation, once per run."""
    import satsynth.workflows.experiment as exp_mod
    from satsynth.segmenter.train import train_segmenter

    spy = SplitSpy(monkeypatch)
    spy.phase = "training"
    train_segmenter(ds, tmp_path / "m", synthetic=syn, ratio=1, epochs=2, **TINY)
    assert spy.test_reads() == []
    assert {c[1] for c in spy.calls if c[0] == str(ds)} == {"train", "val"}

    original = exp_mod.__dict__["final_scores"]

    def final(*a, **k):
        spy.phase = "final"
        try:
            return original(*a, **k)
        finally:
            spy.phase = "training"

    monkeypatch.setattr(exp_mod, "final_scores", final)
    spy.calls.clear()
    gen = stand_in_generator(tmp_path, monkeypatch)
    out = exp_mod.run_experiment(ds, gen, tmp_path / "exp", ratios="0,1", seeds=1, epochs=1,
                                 variants="mix,tstr", **TINY)
    reads = spy.test_reads()
    assert len(reads) == 3  # R=0, mix R=1, tstr: one final evaluation each
    assert all(final_eval and phase == "final" for _, _, final_eval, phase in reads)
    res = json.loads(open(out["results"]).read())
    assert {r["reported_on"] for r in res["runs"]} == {"test"}
    assert all(r["val_miou"] is not None for r in res["runs"])
    assert "mIoU on the **test** split" in open(out["table"]).read()


def _scene(h, w, seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint8)
    for _ in range(30):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        lab[y:y + rng.integers(5, 40), x:x + rng.integers(5, 40)] = rng.integers(0, 3)
    img = (np.asarray([40, 128, 215], np.uint8)[lab])[None].repeat(3, 0)
    return img, lab


def test_prepare_test_split_by_blocks_and_by_sources(tmp_path):
    import geopandas as gpd
    import shapely

    from satsynth.data.prepare import prepare_dataset

    img, lab = _scene(640, 640, 0)
    ip, lp = write_raster(tmp_path / "a.tif", img), write_raster(tmp_path / "a_lab.tif", lab)
    out = prepare_dataset(tmp_path / "ds", images=ip, labels=lp, chip_size=32, stride=16,
                          val_fraction=0.2, test_fraction=0.2, block_size=2, seed=3)
    store = ChipStore(out)
    n = {s: store.count(s) for s in ("train", "val", "test")}
    assert all(v > 0 for v in n.values())
    assert 0.1 < n["test"] / sum(n.values()) < 0.35
    idx = gpd.read_file(out / "chips.gpkg")
    geo = {s: np.array(list(idx[idx.split == s].geometry), dtype=object)
           for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        inter = shapely.area(shapely.intersection(geo[a][:, None], geo[b][None, :]))
        assert inter.max() == 0.0, (a, b)  # overlapping strides: dropped, never shared
    # whole sources: b goes to test, c to validation
    img2, lab2 = _scene(128, 128, 1)
    files = []
    for k, name in enumerate(("north", "south")):  # two tiles east of a, side by side
        t = Affine(0.5, 0, 331_000 + 100 * k, 0, -0.5, 2_790_000)
        files.append((write_raster(tmp_path / f"{name}.tif", img2, transform=t),
                      write_raster(tmp_path / f"{name}_classes.tif", lab2, transform=t)))
    out = prepare_dataset(tmp_path / "ds2", images=[ip] + [f[0] for f in files],
                          labels=[lp] + [f[1] for f in files], chip_size=32,
                          val_sources="south", test_sources="north")
    meta = json.loads((out / "dataset.json").read_text())
    chips = {s["image"].rsplit("/", 1)[-1]: s["chips"] for s in meta["sources"]}
    assert chips["north.tif"] == {"train": 0, "val": 0, "test": 16}
    assert chips["south.tif"] == {"train": 0, "val": 16, "test": 0}
    assert chips["a.tif"]["test"] == 0 and chips["a.tif"]["val"] == 0
    with pytest.raises(SatSynthError, match="either validation or test"):
        prepare_dataset(tmp_path / "ds3", images=[ip, files[0][0]], labels=[lp, files[0][1]],
                        chip_size=32, val_sources="north", test_sources="north")


# --------------------------------------------------------------------------------------------
# low-data subsets


def test_subset_is_reproducible_by_seed_and_picks_what_real_fraction_picks(ds, tmp_path):
    from satsynth.cli import main
    from satsynth.data.subset import real_subset, subset_dataset

    a = subset_dataset(ds, tmp_path / "a", train_fraction=0.25, seed=4, max_val_chips=5)
    assert (a["train"], a["val"], a["test"]) == (16, 5, 12)
    assert main(["subset", str(ds), "--train-fraction", "0.25", "--seed", "4",
                 "--max-val-chips", "5", "--out", str(tmp_path / "b")]) == 0
    src, sa, sb = ChipStore(ds), ChipStore(tmp_path / "a"), ChipStore(tmp_path / "b")
    picked = real_subset(64, 0.25, 4)
    np.testing.assert_array_equal(sa.split("train").images, src.split("train").images[picked])
    np.testing.assert_array_equal(sb.split("train").images, sa.split("train").images)
    np.testing.assert_array_equal(sa.split("test", final_evaluation=True).labels,
                                  src.split("test", final_evaluation=True).labels)
    assert sa.meta.extra["subset"]["train_indices"] == picked.tolist()
    assert sa.meta.normalizer.to_dict() == src.meta.normalizer.to_dict()
    with pytest.raises(SatSynthError):
        sa.split("test")  # still locked in the subset
    c = subset_dataset(ds, tmp_path / "c", train_fraction=0.25, seed=5)
    assert not np.array_equal(ChipStore(c["dataset"]).split("train").images,
                              sa.split("train").images)
    assert subset_dataset(ds, tmp_path / "d", max_train_chips=7)["train"] == 7


# --------------------------------------------------------------------------------------------
# schedules and budgets


def test_budget_schedule_anneals_by_the_deadline_with_a_fake_clock():
    from satsynth.segmenter.schedule import BudgetSchedule

    now = [0.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = BudgetSchedule(opt, "cosine", 0.05, total_steps=10_000, seconds=100.0,
                           clock=lambda: now[0])
    lrs = []
    while not sched.finished():
        now[0] += 1.0  # one second per step: the time budget binds long before 10 000 steps
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert sched.step_done == 100 and sched.out_of_time()
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert max(lrs) == pytest.approx(1.0, abs=1e-3) and np.argmax(lrs) <= 6  # 5 % warm-up
    # half the time: the cosine (which starts after the 5 % warm-up) is (0.5 - 0.05) / 0.95 done
    assert lrs[49] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.45 / 0.95)), abs=1e-3)
    # without a time budget the planned steps rule
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = BudgetSchedule(opt2, "constant", 0.1, total_steps=20)
    for _ in range(20):
        sched2.step()
    assert sched2.finished() and sched2.get_last_lr()[0] == pytest.approx(1.0)


def test_training_lr_reaches_its_end_at_the_time_budget(ds, tmp_path, monkeypatch):
    import satsynth.segmenter.train as train_mod

    now = [0.0]

    def clock():
        now[0] += 0.25  # every look at the clock costs a quarter second
        return now[0]

    monkeypatch.setattr(train_mod, "_now", clock)
    res = train_mod.train_segmenter(ds, tmp_path / "m", epochs=1000, minutes=0.5, lr=1e-2,
                                    patience=0, **TINY)
    m = json.loads(open(res["metrics"]).read())
    assert m["stopped"] == "time limit" and m["steps"] < 1000 * 8
    assert m["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed by the deadline
    assert max(h["lr"] for h in m["history"]) > 1e-3  # it did not start at the end


def test_converge_mode_stops_on_patience_counted_in_steps(ds, tmp_path):
    from satsynth.segmenter.train import train_segmenter

    res = train_segmenter(ds, tmp_path / "m", max_steps=200, val_every=2, patience_steps=4,
                          lr=1e-12, lr_schedule="constant", **TINY)
    m = json.loads(open(res["metrics"]).read())
    # nothing learns at this learning rate: the best stays at the first validation (step 2)
    assert m["stopped"] == "early stop (no better val mIoU for 4 steps)"
    assert [h["extra"]["step"] for h in m["history"]] == [2, 4, 6] and m["steps"] == 6
    assert m["best_step"] == 2


def test_experiment_validates_every_r_at_the_same_step_cadence(ds, tmp_path, monkeypatch):
    import satsynth.segmenter.train as train_mod
    from satsynth.workflows.experiment import run_experiment

    seen = []
    original = train_mod.train_segmenter

    def spy(*a, **k):
        seen.append((k["ratio"], k.get("val_every"), k.get("patience_steps"), k.get("max_steps"),
                     k.get("lr_schedule"), k.get("anneal_steps"), k.get("synthetic_on_top")))
        return original(*a, **k)

    monkeypatch.setattr(train_mod, "train_segmenter", spy)
    gen = stand_in_generator(tmp_path, monkeypatch)
    out = run_experiment(ds, gen, tmp_path / "exp", ratios="0,1", seeds=1, epochs=2,
                         budget="converge", patience=2, real_fraction=0.25, **TINY)
    # 16 real chips = 2 steps per pass: validate every 2 steps for R=0 and R=1 alike; the cap
    # (--epochs passes over the real chips), the patience and the anneal are the same for every
    # R, in real passes, and the synthetic chips come on top of the real ones
    assert [s[:3] for s in seen] == [(0.0, 2, 4), (1.0, 2, 4)]
    assert {s[3:] for s in seen} == {(4, "constant", 4, True)}
    res = json.loads(open(out["results"]).read())
    assert res["settings"]["budget"] == "converge" and res["settings"]["val_every"] == 2


# --------------------------------------------------------------------------------------------
# paired seeds and synthetic modes


class ReadSpy:
    """Records the (kind, index) rows every training batch reads, in order."""

    def __init__(self, monkeypatch):
        from satsynth.segmenter.mixing import TrainingMix

        self.rows = []
        self.paused = False
        original = TrainingMix.read

        def read(mix, rows):
            if not self.paused:
                self.rows.append(np.asarray(rows).copy())
            return original(mix, rows)

        monkeypatch.setattr(TrainingMix, "read", read)

    def real_sequence(self):
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 2), np.int64)
        return rows[rows[:, 0] == 0, 1].tolist()

    def kinds(self):
        return [int(k) for r in self.rows for k in r[:, 0]]


def _init_spy(monkeypatch, inits):
    import satsynth.segmenter.train as train_mod

    original = train_mod.build_segmenter

    def build(*a, **k):
        model = original(*a, **k)
        inits.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        return model

    monkeypatch.setattr(train_mod, "build_segmenter", build)


def test_paired_seeds_share_real_subset_initialisation_and_real_chip_order(ds, syn, tmp_path,
                                                                           monkeypatch):
    from satsynth.segmenter.train import train_segmenter

    inits: list = []
    _init_spy(monkeypatch, inits)
    seqs = {}
    for name, ratio, seed in (("r0", 0, 1), ("r1", 1, 1), ("r0-other-seed", 0, 2)):
        spy = ReadSpy(monkeypatch)
        train_segmenter(ds, tmp_path / name, synthetic=syn if ratio else None, ratio=ratio,
                        real_fraction=0.25, max_steps=6, seed=seed, patience=0, **TINY)
        seqs[name] = spy.real_sequence()
    r0, r1 = seqs["r0"], seqs["r1"]
    assert len(r1) < len(r0)  # the same steps, half of them on synthetic chips
    assert r1 == r0[:len(r1)]  # the real chips come in the same order
    assert set(r0) == set(r1) and len(set(r0)) == 16  # the same real subset
    assert seqs["r0-other-seed"][:16] != r0[:16]  # ...which is the seed's, not a constant
    assert all(torch.equal(inits[0][k], inits[1][k]) for k in inits[0])  # same initialisation
    assert not all(torch.equal(inits[0][k], inits[2][k]) for k in inits[0])


def test_tstr_trains_on_no_real_chip_and_selects_on_real_val(ds, syn, tmp_path, monkeypatch):
    from satsynth.segmenter.train import train_segmenter

    spy = ReadSpy(monkeypatch)
    res = train_segmenter(ds, tmp_path / "m", synthetic=syn, ratio=0.5, synthetic_only=True,
                          epochs=6, lr=1e-2, **TINY)
    assert spy.rows and set(spy.kinds()) == {1}  # synthetic rows only
    cfg = json.loads(open(tmp_path / "m" / "config.json").read())
    assert cfg["training"]["real_chips"] == 0 and cfg["training"]["synthetic_chips"] == 32
    assert cfg["metrics"]["split"] == "val" and res["miou"] > 0.2
    with pytest.raises(SatSynthError, match="synthetic-only"):
        train_segmenter(ds, tmp_path / "m2", synthetic_only=True, **TINY)


def test_pretrain_runs_synthetic_phase_then_real_fine_tuning(ds, syn, tmp_path, monkeypatch):
    import satsynth.segmenter.train as train_mod
    from satsynth.segmenter.train import train_segmenter

    spy = ReadSpy(monkeypatch)
    bn_rows = []
    original = train_mod.reestimate_batch_norm

    def reestimate(model, mix, rows, *a):  # batch norm on real chips, between the phases
        bn_rows.append((np.asarray(rows).copy(), len(spy.rows)))
        spy.paused = True
        try:
            return original(model, mix, rows, *a)
        finally:
            spy.paused = False

    monkeypatch.setattr(train_mod, "reestimate_batch_norm", reestimate)
    res = train_segmenter(ds, tmp_path / "m", synthetic=syn, ratio=1, synthetic_mode="pretrain",
                          real_fraction=0.25, max_steps=8, patience=0, **TINY)
    kinds = spy.kinds()
    first_real = kinds.index(0)
    assert set(kinds[:first_real]) == {1} and set(kinds[first_real:]) == {0}
    # once, at the switch (after the 8 synthetic batches), on the 16 real chips
    assert len(bn_rows) == 1 and bn_rows[0][1] == 8
    assert set(bn_rows[0][0][:, 0]) == {0} and len(np.unique(bn_rows[0][0][:, 1])) == 16
    m = json.loads(open(res["metrics"]).read())
    assert m["synthetic_mode"] == "pretrain" and m["steps"] == 16
    cfg = json.loads(open(tmp_path / "m" / "config.json").read())
    # fine-tuning gets the whole budget of the real-only run; pre-training R times it
    assert [(p["phase"], p["planned_steps"]) for p in cfg["training"]["phases"]] == [
        ("synthetic pre-training", 8), ("real fine-tuning", 8)]
    # fine-tuning visits the real chips the real-only run of this seed does, in its order
    pretrain_real = spy.real_sequence()
    spy = ReadSpy(monkeypatch)
    train_segmenter(ds, tmp_path / "r0", real_fraction=0.25, max_steps=8, patience=0, **TINY)
    assert pretrain_real == spy.real_sequence() and len(pretrain_real) == 64


# --------------------------------------------------------------------------------------------
# statistics


def test_paired_difference_interval_on_a_hand_example():
    from satsynth.workflows.protocol import paired_summary

    def run(variant, ratio, seed, miou, iou, mode="mix"):
        return {"variant": variant, "ratio": ratio, "seed": seed, "miou": miou, "iou": iou,
                "mode": mode, "val_miou": miou, "reported_on": "test", "steps": 10}

    runs = [run("real", 0.0, s, m, [m, None]) for s, m in enumerate((0.5, 0.6, 0.4))]
    runs += [run("mix", 1.0, s, m, [m + 0.1, None])
             for s, m in enumerate((0.51, 0.63, 0.45))]
    runs += [run("mix", 1.0, 7, 0.9, [0.9, None])]  # seed 7 has no R=0 partner: not paired
    runs += [run("tstr", 1.0, s, m, [m, None], "synthetic-only")
             for s, m in enumerate((0.25, 0.3, 0.2))]
    rows = {r["variant"]: r for r in paired_summary(runs, ["a", "b"])}
    mix = rows["mix"]
    # differences 0.01, 0.03, 0.05: mean 0.03, sd 0.02, SE 0.02/sqrt(3) = 0.011547,
    # t(0.975, 2 df) = 4.302653, half-width 0.049683
    assert mix["paired_seeds"] == [0, 1, 2] and mix["runs"] == 4
    assert mix["miou_delta"] == pytest.approx(0.03)
    assert mix["miou_delta_ci"] == pytest.approx([0.03 - 0.049683, 0.03 + 0.049683], abs=1e-6)
    assert mix["iou_delta"][0] == pytest.approx(0.13) and mix["iou_delta"][1] is None
    assert rows["tstr"]["ratio_to_real"] == pytest.approx(0.5)  # 0.25/0.5, 0.3/0.6, 0.2/0.4
    assert rows["tstr"]["ratio_to_real_ci"] == pytest.approx([0.5, 0.5])
    assert rows["real"]["miou_delta"] == pytest.approx(0.0)
    # power: sd 0.02 over 3 seeds; (t(0.975, 2) + t(0.8, 2)) = 4.302653 + 1.060660 = 5.363313,
    # MDE = 5.363313 * 0.02 / sqrt(3) = 0.061930; the interval holds 0: "cannot tell"
    assert mix["miou_delta_sd"] == pytest.approx(0.02)
    assert mix["mde"] == pytest.approx(0.061930, abs=1e-6)
    assert mix["seeds_for_target"] == 10 and mix["verdict"] == "cannot tell"


def test_minimum_detectable_difference_and_seeds_needed_on_known_values():
    from satsynth.workflows.protocol import min_detectable_difference, seeds_needed, verdict

    # sd 0.02: at 10 seeds (t(0.975, 9) 2.262157 + t(0.8, 9) 0.883404) * 0.02 / sqrt(10)
    # = 0.019894 <= 0.02; at 9 seeds (2.306004 + 0.888890) * 0.02 / 3 = 0.021300 > 0.02
    assert min_detectable_difference(0.02, 10) == pytest.approx(0.019894, abs=1e-6)
    assert min_detectable_difference(0.02, 9) == pytest.approx(0.021300, abs=1e-6)
    assert seeds_needed(0.02) == 10
    # sd 0.05 (the issue's spread): 52 seeds; 51 are not enough
    assert seeds_needed(0.05) == 52
    assert min_detectable_difference(0.05, 51) > 0.02 >= min_detectable_difference(0.05, 52)
    assert min_detectable_difference(0.05, 1) is None and seeds_needed(None) is None
    assert seeds_needed(0.0) == 2
    assert verdict(-0.064, 0.042) == "cannot tell"  # the issue's mix R=0.5
    assert verdict(-0.01, 0.01) == "no difference of 0.02 or more"
    # an interval that reaches 0.02 does not rule out 0.02, however many seeds it took
    assert verdict(-0.001, 0.022) == "cannot tell"
    assert verdict(-0.025, 0.01) == "cannot tell"
    assert verdict(0.001, 0.04) == "better" and verdict(-0.04, -0.01) == "worse"
    assert verdict(None, None) == "cannot tell (1 seed)"


def test_the_table_gives_the_power_next_to_each_interval():
    from satsynth.workflows.protocol import paired_summary
    from satsynth.workflows.report import experiment_html, experiment_markdown

    def run(variant, ratio, seed, miou):
        return {"variant": variant, "ratio": ratio, "seed": seed, "miou": miou, "iou": [miou],
                "mode": "mix", "val_miou": miou, "reported_on": "test", "steps": 10,
                "real_chips": 16, "synthetic_chips": 16 * ratio}

    runs = [run("real", 0.0, s, m) for s, m in enumerate((0.5, 0.6, 0.4))]
    runs += [run("mix", 1.0, s, m) for s, m in enumerate((0.51, 0.63, 0.45))]
    summary = paired_summary(runs, ["a"])
    md = experiment_markdown(summary, ["a"], {"arch": "tiny"})
    row = next(line for line in md.splitlines() if line.startswith("| mix |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    head = next(line for line in md.splitlines() if line.startswith("| variant |"))
    names = [c.strip() for c in head.strip("|").split("|")]
    assert len(cells) == len(names)
    got = dict(zip(names, cells, strict=True))
    assert got["detectable Δ"] == "0.0619" and got["seeds for ±0.02"] == "10"
    assert got["reading"] == "cannot tell" and "not significant" not in md
    real = next(line for line in md.splitlines() if line.startswith("| real |"))
    assert len(real.strip("|").split("|")) == len(names)
    assert "<td>cannot tell</td>" in experiment_html(md, "plot.png", "t")


def test_cli_exposes_the_protocol_flags():
    from satsynth.cli import build_parser

    p = build_parser()
    a = p.parse_args(["train-segmenter", "D", "--out", "S", "--synthetic", "Y",
                      "--synthetic-mode", "pretrain", "--val-every", "5", "--patience-steps",
                      "10", "--lr-schedule", "constant", "--minutes", "20"])
    assert (a.synthetic_mode, a.val_every, a.patience_steps, a.lr_schedule, a.synthetic_only) == (
        "pretrain", 5, 10, "constant", False)
    assert p.parse_args(["train-segmenter", "D", "--out", "S", "--synthetic-only"]).synthetic_only
    a = p.parse_args(["train-segmenter", "D", "--out", "S", "--synthetic-on-top",
                      "--anneal-steps", "7"])
    assert (a.synthetic_on_top, a.anneal_steps) == (True, 7)
    a = p.parse_args(["experiment", "D", "--out", "E", "--budget", "converge", "--variants",
                      "mix,pretrain,tstr", "--val-every", "3"])
    assert (a.budget, a.variants, a.val_every) == ("converge", "mix,pretrain,tstr", 3)
    a = p.parse_args(["prepare", "--folder", "F", "--out", "D", "--val-sources", "Tile 6",
                      "--test-sources", "Tile 7", "--test-fraction", "0.1"])
    assert (a.test_sources, a.test_fraction) == ("Tile 7", 0.1)
    a = p.parse_args(["subset", "D", "--train-fraction", "0.025", "--out", "S"])
    assert (a.train_fraction, a.max_train_chips, a.seed) == (0.025, None, 0)
    with pytest.raises(SystemExit):  # one way to pick
        p.parse_args(["subset", "D", "--train-fraction", "0.1", "--max-train-chips", "5",
                      "--out", "S"])
    from satsynth.workflows.protocol import parse_variants

    with pytest.raises(SatSynthError, match="unknown bogus"):
        parse_variants("mix,bogus")


# --------------------------------------------------------------------------------------------
# the same real exposure for every R, pretrain, and the end of training


def test_synthetic_on_top_gives_every_r_the_real_chips_of_the_real_only_run(ds, syn, tmp_path,
                                                                            monkeypatch):
    """At R=1 (and R=0.5) with the synthetic chips on top, the run sees exactly the real chips
    of R=0, batch for batch, and R x batch size synthetic ones in each batch."""
    from satsynth.segmenter.train import train_segmenter

    batches = {}
    for name, ratio in (("r0", 0), ("r1", 1), ("r05", 0.5)):
        spy = ReadSpy(monkeypatch)
        res = train_segmenter(ds, tmp_path / name, synthetic=syn if ratio else None, ratio=ratio,
                              real_fraction=0.25, max_steps=6, seed=1, patience=0,
                              synthetic_on_top=True, **TINY)
        assert json.loads(open(res["metrics"]).read())["steps"] == 6
        batches[name] = [b for b in spy.rows if len(b) > 0]
    real = {n: [b[b[:, 0] == 0, 1].tolist() for b in bs] for n, bs in batches.items()}
    assert real["r1"] == real["r0"] == real["r05"]  # the same real chips at every step
    assert sum(len(b) for b in real["r1"]) == 6 * 8  # 6 steps of 8 real chips
    assert [int((b[:, 0] == 1).sum()) for b in batches["r1"]] == [8] * 6
    assert [int((b[:, 0] == 1).sum()) for b in batches["r05"]] == [4] * 6
    # each synthetic chip once per pass over the real chips (16 of them, 2 steps per pass)
    syn1 = np.concatenate([b[b[:, 0] == 1, 1] for b in batches["r1"][:2]])
    assert len(np.unique(syn1)) == 16
    # without the option the real-only budget halves the real chips at R=1 (the old defect)
    spy = ReadSpy(monkeypatch)
    train_segmenter(ds, tmp_path / "mixed", synthetic=syn, ratio=1, real_fraction=0.25,
                    max_steps=6, seed=1, patience=0, **TINY)
    assert len(spy.real_sequence()) < 6 * 8


def test_pretrain_keeps_a_model_of_the_real_phase_only(ds, syn, tmp_path, monkeypatch):
    """Even when a validation of the synthetic pre-training scores higher than any of the real
    fine-tuning, the model kept comes from the fine-tuning."""
    import satsynth.segmenter.metrics as metrics_mod
    from satsynth.segmenter.train import train_segmenter

    original = metrics_mod.SegmentationMetrics.compute
    calls = []

    def compute(self, names=None):
        out = original(self, names)
        calls.append(1)
        return {**out, "miou": 0.99 if len(calls) <= 2 else 0.1 + 0.01 * len(calls)}

    monkeypatch.setattr(metrics_mod.SegmentationMetrics, "compute", compute)
    res = train_segmenter(ds, tmp_path / "m", synthetic=syn, ratio=1, synthetic_mode="pretrain",
                          real_fraction=0.25, max_steps=4, val_every=2, patience=0, **TINY)
    m = json.loads(open(res["metrics"]).read())
    phases = [(h["extra"]["phase"], h["val_miou"]) for h in m["history"]]
    assert phases[:2] == [("synthetic pre-training", 0.99)] * 2
    assert m["miou"] < 0.5 and m["best_step"] > 4  # kept in the fine-tuning (steps 5-8)
    assert m["miou"] == max(v for p, v in phases if p == "real fine-tuning")


def test_batch_norm_is_reestimated_on_the_given_chips(ds):
    """After re-estimation the first batch norm's running mean is the mean of its input over the
    chips, whatever training left there."""
    from satsynth.data.store import ChipStore
    from satsynth.segmenter.mixing import build_mix
    from satsynth.segmenter.model import SegmenterConfig, build_segmenter
    from satsynth.segmenter.train import reestimate_batch_norm

    store = ChipStore(ds)
    mix = build_mix(store, [], 0.0, real_fraction=0.25)
    meta = store.meta
    model = build_segmenter(SegmenterConfig(arch="tiny", encoder="w4d1", in_channels=meta.bands,
                                            classes=meta.classes, normalization=meta.normalizer,
                                            chip_size=meta.chip_size))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    bns[0].running_mean.fill_(5.0)
    rows = mix.entries()
    reestimate_batch_norm(model, mix, rows, meta.normalizer, 8, "cpu")
    x = torch.from_numpy(meta.normalizer.to_model(mix.read(rows)[0]))
    with torch.no_grad():
        expected = conv(x).mean((0, 2, 3))
    torch.testing.assert_close(bns[0].running_mean, expected, rtol=1e-4, atol=1e-5)
    assert model.training  # the training mode is left as it was


def test_anneal_keeps_the_average_of_its_steps_not_the_best_validation(ds, tmp_path,
                                                                       monkeypatch):
    from safetensors.torch import load_file

    import satsynth.segmenter.train as train_mod

    states = []
    original = train_mod.average_weights

    def average(optimizer, module):  # also record the weights after every anneal step
        avg = original(optimizer, module)
        optimizer.register_step_post_hook(lambda *_: states.append(
            {k: v.detach().clone() for k, v in module.state_dict().items()}))
        return avg

    monkeypatch.setattr(train_mod, "average_weights", average)
    res = train_mod.train_segmenter(ds, tmp_path / "m", max_steps=6, val_every=2, lr=1e-2,
                                    lr_schedule="constant", anneal_steps=4, **TINY)
    m = json.loads(open(res["metrics"]).read())
    assert len(states) == 4 and m["steps"] == 10 and m["best_step"] == 10
    assert m["history"][-1]["extra"]["phase"] == "average of the anneal"
    assert m["miou"] == m["history"][-1]["val_miou"]
    lrs = [h["lr"] for h in m["history"]]
    assert lrs[0] == pytest.approx(1e-2) and 0 < lrs[-2] < 1e-2  # constant, then annealing
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # ...to 0 at the end
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    for k, v in saved.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k].float() for s in states]).mean(0))
