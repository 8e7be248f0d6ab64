"""Low-data test mIoU of a segmenter whose encoder starts from random weights against the same
segmenter started from pretrained weights (``--encoder-weights``), on the Dubai low-data split.

Nothing is downloaded: where the weights are not in their cache (``satsynth fetch-weights NAME
--encoder ENC`` on a machine that is online, then copy the cache over), or the Dubai data are
absent, it says so and exits 0 without measuring.

    .venv/bin/python benchmarks/bench_pretrained.py [--weights imagenet --encoder resnet18]

The split is the one of docs/segmenter.md ("The Dubai low-data study"): 64 px chips, Tiles 1-5
for training, of which 2.5 % (seed 0) are used, Tile 6 for selection, Tile 7 for the report. For
each seed both runs use the same chips, steps and schedule (``--budget``: ``--epochs`` passes,
patience off); the test mIoU of each and their paired difference are printed, with the CPU
seconds each run took. Exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DUBAI = REPO.parent / "shared" / "datasets" / "dubai-aerial"


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "satsynth", *args, "--progress", "quiet"], check=True)


def prepare(data: Path, work: Path, fraction: float, max_val: int, max_test: int) -> Path:
    """The 64 px chips of the study and its low-data subset (kept in ``work`` between runs)."""
    full, low = work / "dubai64", work / f"dubai64-{fraction:g}"
    if not (full / "dataset.json").is_file():
        _run("prepare", "--folder", str(data), "--val-sources", "Tile 6", "--test-sources",
             "Tile 7", "--chip-size", "64", "--out", str(full))
    if not (low / "dataset.json").is_file():
        _run("subset", str(full), "--train-fraction", f"{fraction:g}", "--max-val-chips",
             str(max_val), "--max-test-chips", str(max_test), "--out", str(low))
    return low


def one_run(dataset: Path, out: Path, weights: str | None, a: argparse.Namespace,
            seed: int) -> dict:
    from satsynth.segmenter.train import train_segmenter
    from satsynth.workflows.protocol import final_scores

    cpu = time.process_time()
    res = train_segmenter(dataset, out, arch=a.arch, encoder=a.encoder, encoder_weights=weights,
                          epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, patience=0,
                          seed=seed, device=a.device)
    scores, split = final_scores(out, dataset, a.device)
    return {"weights": weights or "random", "seed": seed, "val_miou": res["miou"],
            "test_miou": scores["miou"], "split": split,
            "cpu_s": round(time.process_time() - cpu, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="imagenet",
                    help="imagenet (or another name smp knows), or torchgeo:NAME")
    ap.add_argument("--arch", default="fpn")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--data", type=Path, default=DUBAI)
    ap.add_argument("--work", type=Path, default=Path("/tmp/satsynth-bench-pretrained"))
    ap.add_argument("--train-fraction", type=float, default=0.025)
    ap.add_argument("--max-val-chips", type=int, default=500)
    ap.add_argument("--max-test-chips", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    from satsynth import progress
    from satsynth.errors import SatSynthError
    from satsynth.segmenter.weights import weights_cached

    try:
        cached, where = weights_cached(a.weights, a.encoder)
    except SatSynthError as exc:
        print(f"SKIP: {exc}")
        return 0
    if not cached:
        print(f"SKIP: the {a.weights} weights for {a.encoder} are not in the cache {where}; "
              f"nothing was measured (run `satsynth fetch-weights {a.weights} --encoder "
              f"{a.encoder}` where the network is reachable and copy the cache here)")
        return 0
    if not (a.data / "Tile 7").is_dir():
        print(f"SKIP: the Dubai data are not in {a.data}; nothing was measured")
        return 0
    progress.set_mode("quiet")
    dataset = prepare(a.data, a.work, a.train_fraction, a.max_val_chips, a.max_test_chips)
    rows = []
    for seed in range(a.seeds):
        for weights in (None, a.weights):
            tag = "random" if weights is None else weights.replace(":", "_")
            rows.append(one_run(dataset, a.work / f"seg-{tag}-{seed}", weights, a, seed))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.arch}/{a.encoder}, {a.train_fraction:g} of the training chips, {a.epochs} "
          f"epochs, test = Tile 7 ({a.max_test_chips} chips at most); OMP threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("| seed | random test mIoU | pretrained test mIoU | difference |")
    print("|---:|---:|---:|---:|")
    diffs = []
    for seed in range(a.seeds):
        r, p = rows[2 * seed]["test_miou"], rows[2 * seed + 1]["test_miou"]
        diffs.append(p - r)
        print(f"| {seed} | {r:.3f} | {p:.3f} | {p - r:+.3f} |")
    print(f"mean difference (pretrained - random): {sum(diffs) / len(diffs):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
