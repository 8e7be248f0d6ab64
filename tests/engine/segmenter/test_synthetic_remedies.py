"""The cheap remedies of a mix (issue 20): synthetic chips weighted down in the loss
(``--synthetic-weight``), batch-norm statistics of the real chips only (``--batch-norm-stats
real``), and the experiment variants that run them (``mix-weighted``, ``mix-realbn``)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from builders import make_store, stand_in_generator
from safetensors.torch import load_file

from satsynth.data.classes import IGNORE_INDEX
from satsynth.errors import SatSynthError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"arch": "tiny", "encoder": "w4d1", "batch_size": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("real") / "ds")


def _batch(seed=0, b=6, k=3, s=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, s, s, generator=g)
    y = torch.randint(0, k, (b, s, s), generator=g)
    y[:, :2, :3] = IGNORE_INDEX  # some unlabeled pixels in every chip
    return logits, y


# --------------------------------------------------------------------------------------------
# the synthetic weight in the loss


def test_weight_one_is_the_plain_loss_bit_for_bit():
    from satsynth.segmenter.train import make_loss

    logits, y = _batch()
    syn = np.array([0, 1, 0, 1, 1, 0], bool)
    for dice in (False, True):
        for weights in (None, [0.5, 1.0, 2.0]):
            plain = make_loss(3, dice, weights, "cpu")(logits, y)
            assert torch.equal(make_loss(3, dice, weights, "cpu", 1.0)(logits, y, syn), plain)
            # another weight, no synthetic chip in the batch: the plain loss too
            assert torch.equal(make_loss(3, dice, weights, "cpu", 0.3)(
                logits, y, np.zeros(6, bool)), plain)


def test_a_synthetic_pixel_counts_w_times_a_real_one():
    """Cross-entropy (class weights, ignore index) at W = 2 is the plain loss of the batch with
    every synthetic chip present twice; at W = 0.5 that of the real chips twice."""
    from satsynth.segmenter.train import make_loss

    logits, y = _batch(1)
    syn = np.array([1, 0, 0, 1, 0, 0], bool)
    weights = [0.5, 1.0, 2.0]
    plain = make_loss(3, False, weights, "cpu")
    twice_syn = np.r_[np.arange(6), np.nonzero(syn)[0]]
    twice_real = np.r_[np.arange(6), np.nonzero(~syn)[0]]
    torch.testing.assert_close(make_loss(3, False, weights, "cpu", 2.0)(logits, y, syn),
                               plain(logits[twice_syn], y[twice_syn]))
    torch.testing.assert_close(make_loss(3, False, weights, "cpu", 0.5)(logits, y, syn),
                               plain(logits[twice_real], y[twice_real]))


def test_weight_zero_gives_synthetic_chips_no_gradient():
    """At W = 0 the loss (with Dice and class weights) is that of the real chips alone, and the
    synthetic chips' logits get no gradient; a batch of synthetic chips alone gives 0."""
    from satsynth.segmenter.train import make_loss

    logits, y = _batch(2)
    syn = np.array([0, 1, 1, 0, 1, 0], bool)
    loss_fn = make_loss(3, True, [0.5, 1.0, 2.0], "cpu", 0.0)
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, y, syn)
    loss.backward()
    torch.testing.assert_close(loss, make_loss(3, True, [0.5, 1.0, 2.0], "cpu")(
        logits[~syn], y[~syn]))
    assert torch.count_nonzero(x.grad[syn]) == 0 and torch.count_nonzero(x.grad[~syn]) > 0
    x.grad = None
    alone = loss_fn(x, y, np.ones(6, bool))
    alone.backward()
    assert float(alone.detach()) == 0.0 and torch.count_nonzero(x.grad) == 0


def test_weight_zero_model_gradients_are_those_of_the_real_chips(real):
    """Through a model (in eval mode, so that batch norm does not mix the chips): the gradients
    of every weight from a mixed batch at W = 0 are those of its real chips alone."""
    from satsynth.data.store import ChipStore
    from satsynth.segmenter.model import SegmenterConfig, build_segmenter, forward_logits
    from satsynth.segmenter.train import make_loss

    meta = ChipStore(real).meta
    torch.manual_seed(0)
    model = build_segmenter(SegmenterConfig(arch="tiny", encoder="w4d1", in_channels=1,
                                            classes=meta.classes, normalization=meta.normalizer,
                                            chip_size=meta.chip_size)).eval()
    tr = ChipStore(real).split("train")
    x = torch.from_numpy(meta.normalizer.to_model(tr.images[:6].astype(np.float32)))
    y = torch.from_numpy(np.array(tr.labels[:6])).long()
    syn = np.array([1, 0, 1, 0, 0, 1], bool)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    mixed = grads(make_loss(3, False, None, "cpu", 0.0)(forward_logits(model, x), y, syn))
    alone = grads(make_loss(3, False, None, "cpu")(forward_logits(model, x[~syn]), y[~syn]))
    for a, b in zip(mixed, alone, strict=True):
        torch.testing.assert_close(a, b)


def test_training_reads_the_weight_and_records_it(real, syn, tmp_path):
    from satsynth.segmenter.train import train_segmenter

    run = {"synthetic": syn, "ratio": 1, "real_fraction": 0.25, "max_steps": 4, "patience": 0,
           **TINY}
    train_segmenter(real, tmp_path / "w1", synthetic_weight=1.0, **run)
    train_segmenter(real, tmp_path / "default", **run)
    train_segmenter(real, tmp_path / "w05", synthetic_weight=0.5, **run)
    w = {n: load_file(str(tmp_path / n / "model.safetensors")) for n in ("w1", "default", "w05")}
    assert all(torch.equal(w["w1"][k], w["default"][k]) for k in w["default"])
    assert not all(torch.equal(w["w05"][k], w["default"][k]) for k in w["default"])
    cfg = json.loads((tmp_path / "w05" / "config.json").read_text())
    assert cfg["training"]["options"]["synthetic_weight"] == 0.5


@pytest.mark.parametrize("options, message", [
    ({"synthetic_weight": -0.5}, "--synthetic-weight must be a number >= 0, got -0.5"),
    ({"synthetic_weight": float("nan")}, "--synthetic-weight must be a number >= 0, got nan"),
    ({"synthetic_weight": float("inf")}, "--synthetic-weight must be a number >= 0"),
    ({"synthetic_weight": 0.5, "synthetic_mode": "pretrain"}, "needs --synthetic-mode mix"),
    ({"synthetic_weight": 0.5, "synthetic_only": True}, "without --synthetic-only"),
    ({"batch_norm_stats": "synthetic"}, "--batch-norm-stats must be one of all, real"),
    ({"batch_norm_stats": "real", "synthetic_only": True}, "which --synthetic-only does not"),
])
def test_bad_remedy_options_are_refused_in_one_line_before_any_work(real, syn, tmp_path, options,
                                                                    message):
    from satsynth.segmenter.train import train_segmenter

    with pytest.raises(SatSynthError, match=message.replace("+", r"\+")) as err:
        train_segmenter(real, tmp_path / "m", synthetic=syn, ratio=1, **options, **TINY)
    assert "\n" not in str(err.value) and not (tmp_path / "m").exists()


def test_the_cli_offers_both_options():
    from satsynth.cli import build_parser

    p = build_parser()
    a = p.parse_args(["train-segmenter", "D", "--out", "S"])
    assert (a.synthetic_weight, a.batch_norm_stats) == (1.0, "all")
    a = p.parse_args(["train-segmenter", "D", "--out", "S", "--synthetic-weight", "0.25",
                      "--batch-norm-stats", "real"])
    assert (a.synthetic_weight, a.batch_norm_stats) == (0.25, "real")
    assert p.parse_args(["experiment", "D", "--out", "E"]).synthetic_weight == 0.5
    with pytest.raises(SystemExit):
        p.parse_args(["train-segmenter", "D", "--out", "S", "--batch-norm-stats", "mixed"])


# --------------------------------------------------------------------------------------------
# batch-norm statistics of the real chips


def _real_chip_batches(real, syn, real_fraction, batch_size, seed=0):
    """The run's real training chips, normalized, in batches (as training holds them)."""
    from satsynth.data.store import ChipStore
    from satsynth.segmenter.mixing import build_mix

    store = ChipStore(real)
    mix = build_mix(store, [ChipStore(syn)], 1.0, real_fraction, 0, seed)
    rows = mix.entries()[mix.entries()[:, 0] == 0]
    assert len(rows) == int(len(store.split("train")) * real_fraction)
    x = torch.from_numpy(store.meta.normalizer.to_model(mix.read(rows)[0]))
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def _bn_buffers(state):
    return {k: v for k, v in state.items() if "running_" in k}


def _reestimated(model_dir, batches):
    """The saved model's weights with batch norm re-estimated directly (update_bn) on
    ``batches``."""
    from torch.optim.swa_utils import update_bn

    from satsynth.segmenter.model import load_segmenter

    model, _ = load_segmenter(model_dir, "cpu")
    update_bn(batches, model)
    return _bn_buffers(model.state_dict())


def test_real_stats_after_the_anneal_are_those_of_the_real_chips(real, syn, tmp_path):
    """With the anneal: training goes exactly as with ``all`` (the same averaged weights), and the
    kept model's batch-norm statistics are update_bn's over the real training chips, not the
    mixed ones; its validation (metrics.json) scores that model. FPN: its decoder's dropout
    draws random numbers, which the re-estimation must leave as they were."""
    from satsynth.segmenter.evaluate import evaluate_dataset
    from satsynth.segmenter.train import train_segmenter

    run = {"synthetic": syn, "ratio": 1, "real_fraction": 0.25, "max_steps": 4, "val_every": 2,
           "anneal_steps": 2, "lr": 1e-2, "lr_schedule": "constant", "synthetic_on_top": True,
           **TINY, "arch": "fpn", "encoder": "resnet18"}
    train_segmenter(real, tmp_path / "all", **run)
    res = train_segmenter(real, tmp_path / "real", batch_norm_stats="real", **run)
    a = load_file(str(tmp_path / "all" / "model.safetensors"))
    r = load_file(str(tmp_path / "real" / "model.safetensors"))
    bn = _bn_buffers(r)
    assert bn and all(torch.equal(a[k], r[k]) for k in r if k not in bn and "num_batches" not in k)
    expected = _reestimated(tmp_path / "real", _real_chip_batches(real, syn, 0.25, 8))
    for k in bn:
        torch.testing.assert_close(r[k], expected[k])
    assert any(not torch.allclose(a[k], r[k]) for k in bn)  # the mixed statistics differ
    m = json.loads(open(res["metrics"]).read())
    assert m["history"][-1]["extra"]["phase"] == "average of the anneal"
    again = evaluate_dataset(tmp_path / "real", tmp_path / "eval", real, device="cpu")
    assert again["miou"] == pytest.approx(m["miou"], abs=1e-6)
    training = json.loads((tmp_path / "real" / "config.json").read_text())["training"]
    assert training["options"]["batch_norm_stats"] == "real"
    assert training["batch_norm"].startswith("re-estimated on the real training chips")


def test_real_stats_of_the_best_validation_are_those_of_the_real_chips(real, syn, tmp_path):
    """Without the anneal every validation scores the model with real-chip statistics, and the
    kept best carries those it was scored with."""
    from satsynth.segmenter.evaluate import evaluate_dataset
    from satsynth.segmenter.train import train_segmenter

    res = train_segmenter(real, tmp_path / "m", synthetic=syn, ratio=1, real_fraction=0.25,
                          max_steps=6, val_every=2, patience=0, lr=1e-2,
                          batch_norm_stats="real", **TINY)
    m = json.loads(open(res["metrics"]).read())
    assert len(m["history"]) == 3
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    expected = _reestimated(tmp_path / "m", _real_chip_batches(real, syn, 0.25, 8))
    for k in _bn_buffers(saved):
        torch.testing.assert_close(saved[k], expected[k])
    again = evaluate_dataset(tmp_path / "m", tmp_path / "eval", real, device="cpu")
    assert again["miou"] == pytest.approx(m["miou"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# the experiment's variants


def test_remedy_variants_train_with_their_options_and_resume(real, tmp_path, monkeypatch):
    import satsynth.segmenter.train as train_mod
    from satsynth.workflows.experiment import ExperimentConfig, run_experiment

    seen = []
    original = train_mod.train_segmenter

    def spy(*a, **k):
        seen.append((k["ratio"], k.get("batch_norm_stats"), k.get("synthetic_weight")))
        return original(*a, **k)

    monkeypatch.setattr(train_mod, "train_segmenter", spy)
    gen = stand_in_generator(tmp_path, monkeypatch)
    opts = {"ratios": "0,1", "seeds": 1, "epochs": 1, "real_fraction": 0.25,
            "variants": "mix,mix-realbn,mix-weighted", "synthetic_weight": 0.25, **TINY}
    out = run_experiment(real, gen, tmp_path / "exp", **opts)
    # R=0 (shared by every variant) and mix train as before; each remedy with its option
    assert seen == [(0.0, None, None), (1.0, None, None), (1.0, "real", None),
                    (1.0, None, 0.25)]
    key = ExperimentConfig(**{**opts, "ratios": [0.0, 1.0],
                              "variants": ["mix", "mix-realbn", "mix-weighted"]}).train_key()
    runs = json.loads((tmp_path / "exp" / "runs.json").read_text())
    assert {r["variant"]: r["train_key"] for r in runs} == {
        "real": key, "mix": key, "mix-realbn": f"{key}-bnreal", "mix-weighted": f"{key}-synw0.25"}
    res = json.loads(open(out["results"]).read())
    assert [r["variant"] for r in res["summary"]] == ["real", "mix", "mix-realbn", "mix-weighted"]
    seen.clear()
    run_experiment(real, gen, tmp_path / "exp", **opts)  # resumed: nothing to run
    assert seen == []
    seen.clear()  # another weight: only the mix-weighted run is new
    run_experiment(real, gen, tmp_path / "exp", **{**opts, "synthetic_weight": 0.5})
    assert seen == [(1.0, None, 0.5)]
    with pytest.raises(SatSynthError, match="--synthetic-weight must be a number >= 0"):
        run_experiment(real, gen, tmp_path / "exp2", **{**opts, "synthetic_weight": -1.0})


def test_the_keys_of_runs_made_before_the_remedies_are_unchanged(real, tmp_path):
    """The training key and the variants' run keys as the code before the remedies computed them
    (literal values), and a runs.json written then is still found."""
    from satsynth.data.store import ChipStore
    from satsynth.workflows.experiment import ExperimentConfig, ExperimentPlan
    from satsynth.workflows.protocol import VARIANTS

    study = {"budget": "converge", "real_fraction": 0.025, "epochs": 15, "patience": 4}
    assert ExperimentConfig().train_key() == "2e0baa52d3"
    cfg = ExperimentConfig(**study)
    assert cfg.train_key() == "9b048b49d5"
    old = {"mix": "9b048b49d5", "pretrain": "9b048b49d5", "tstr": "9b048b49d5",
           "filtered": "9b048b49d5-keep0.5", "filtered-pretrain": "9b048b49d5-keep0.5"}
    records = [{"variant": "real", "ratio": 0.0, "seed": 0, "train_key": "9b048b49d5",
                "generator_fingerprint": None}]
    records += [{"variant": v, "ratio": 1.0, "seed": 0, "train_key": k,
                 "generator_fingerprint": "fp"} for v, k in old.items()]
    plan = ExperimentPlan(cfg, ChipStore(real), tmp_path, 16, 2, {}, [], dict(VARIANTS),
                          cfg.train_key(), "fp", [], records, False)
    assert {v: plan.run_key(v) for v in old} == old
    assert plan.find(0, "real", 0.0) is records[0]
    assert all(plan.find(0, v, 1.0) is not None for v in old)
    assert plan.model_dir(0, "filtered", 1.0).name == "filtered-R1-seed0-9b048b49d5-keep0.5"
    assert "synthetic_weight" in asdict(cfg)  # a new setting, outside the training key


def test_the_real_repeat_control_puts_real_training_chips_on_top(tmp_path, monkeypatch):
    """``real-repeat``: the R |D| chips on top of a run's batches are real training chips (the
    dataset itself as the pool: no synthetic chip is read), with the batches of ``mix``; at
    --real-fraction below 1 it is refused in one line (chips from outside the subset)."""
    import satsynth.segmenter.train as train_mod
    from satsynth.workflows.experiment import run_experiment

    real = make_store(tmp_path / "d", n_train=16)
    seen = []
    original = train_mod.train_segmenter

    def spy(*a, **k):
        seen.append((k["ratio"], k["synthetic"], k.get("synthetic_on_top")))
        return original(*a, **k)

    monkeypatch.setattr(train_mod, "train_segmenter", spy)
    gen = stand_in_generator(tmp_path, monkeypatch)
    opts = {"ratios": "0,0.5", "seeds": 1, "epochs": 1, "budget": "steps",
            "variants": "mix,real-repeat", **TINY}
    out = run_experiment(real, gen, tmp_path / "exp", **opts)
    assert [s[0] for s in seen] == [0.0, 0.5, 0.5]
    assert seen[1][1] != [str(real)] and seen[2][1] == [str(real)]
    assert seen[1][2] is seen[2][2] is True
    runs = {r["variant"]: r for r in json.loads(open(out["results"]).read())["runs"]}
    assert runs["real-repeat"]["synthetic_chips"] == runs["mix"]["synthetic_chips"] == 8
    assert runs["real-repeat"]["train_key"].endswith("-realrepeat")
    with pytest.raises(SatSynthError, match="real-repeat control.*--real-fraction"):
        run_experiment(real, gen, tmp_path / "exp2", **{**opts, "real_fraction": 0.5})
