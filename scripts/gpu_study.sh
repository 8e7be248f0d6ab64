#!/usr/bin/env bash
# The Dubai low-data study at the paper's scale on one GPU, in about 10 minutes (issue 20, 3):
# 128 px chips, a generator of the default recipe and one of --recipe paper, and the cascade
# (a base at 128 px + a 2x upsampler to 256 px), each put through `satsynth experiment` under
# protocol 3 (docs/segmenter.md): mix and pretrain at R = 0.5 and 1, paired seeds, selection on
# Tile 6, report on Tile 7. Each experiment writes its table.md, plot.png and report.html; this
# script gathers them in $OUT (study.md: the three tables; plot-*.png: the figures).
#
#   scripts/gpu_study.sh [OUT]          (default gpu-study/)
#
# Environment: SATSYNTH_PYTHON (default .venv/bin/python), DATA (default
# ../shared/datasets/dubai-aerial), SEEDS (default 3), GEN_MINUTES (minutes of each generator
# stage, default 1.5), PRESET (the UNet size, default base: the paper's). Without a CUDA GPU it
# says so and exits 0: nothing is run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${SATSYNTH_PYTHON:-.venv/bin/python}"
DATA="${DATA:-../shared/datasets/dubai-aerial}"
OUT="${1:-gpu-study}"
SEEDS="${SEEDS:-3}"
GEN_MINUTES="${GEN_MINUTES:-1.5}"
PRESET="${PRESET:-base}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null
then
  echo "gpu_study.sh: no CUDA GPU here (torch.cuda.is_available() is False for $PY): the study"
  echo "needs one; nothing was run. On a GPU machine: scripts/gpu_study.sh [OUT]"
  exit 0
fi
if [ ! -d "$DATA" ]; then
  echo "gpu_study.sh: the Dubai aerial set is not at $DATA (set DATA=...)" >&2
  exit 2
fi
mkdir -p "$OUT"
START=$(date +%s)
ss() { "$PY" -m satsynth --progress quiet "$@"; }
stamp() { echo "[gpu_study $(( $(date +%s) - START )) s] $*"; }

# 1. chips: 128 px for the single models, 256 px for the cascade; Tiles 1-5 train, Tile 6 val,
#    Tile 7 test; the low-data sets: 2.5 % of the training chips (seed 0), 500 Tile 6 chips for
#    selection, 2000 Tile 7 chips for the report
for S in 128 256; do
  [ -f "$OUT/dubai$S/dataset.json" ] || ss prepare --folder "$DATA" --val-sources "Tile 6" \
      --test-sources "Tile 7" --chip-size "$S" --out "$OUT/dubai$S"
  [ -f "$OUT/dubai$S-s/dataset.json" ] || ss subset "$OUT/dubai$S" --train-fraction 0.025 \
      --max-val-chips 500 --max-test-chips 2000 --out "$OUT/dubai$S-s"
done
stamp "chips ready"

# 2. the generators, each GEN_MINUTES on the GPU (bf16 where the GPU has it)
G="--minutes $GEN_MINUTES --device cuda --mixed-precision bf16 --preset $PRESET"
[ -f "$OUT/gen-default/config.json" ] || ss train-generator "$OUT/dubai128-s" $G --out "$OUT/gen-default"
[ -f "$OUT/gen-paper/config.json" ] || ss train-generator "$OUT/dubai128-s" $G --recipe paper --out "$OUT/gen-paper"
[ -f "$OUT/base128/config.json" ] || ss train-generator "$OUT/dubai256-s" $G --size 128 --out "$OUT/base128"
[ -f "$OUT/sr2/config.json" ] || ss train-upsampler "$OUT/dubai256-s" $G --base-size 128 --factor 2 --out "$OUT/sr2"
stamp "generators trained"

# 3. the experiments (protocol 3: the same real chips at every step for every R, converge with
#    the anneal and weight average at the end); resuming the same folder adds only missing runs
X=(--ratios 0,0.5,1 --seeds "$SEEDS" --variants mix,pretrain --budget converge --epochs 15
   --patience 3 --count-per-real 1 --arch fpn --encoder resnet18 --batch-size 16 --device cuda
   --keep-models)
ss experiment "$OUT/dubai128-s" --generator "$OUT/gen-default" --out "$OUT/exp-default" "${X[@]}"
stamp "experiment: default recipe"
ss experiment "$OUT/dubai128-s" --generator "$OUT/gen-paper" --out "$OUT/exp-paper" "${X[@]}"
stamp "experiment: paper recipe"
ss experiment "$OUT/dubai256-s" --generator "$OUT/base128" --upsampler "$OUT/sr2" \
    --out "$OUT/exp-cascade" "${X[@]}"
stamp "experiment: cascade 128 -> 256 px"

# 4. the tables and figures in one place
{
  echo "# The Dubai low-data study on one GPU ($(date -u +%Y-%m-%d), $(( $(date +%s) - START )) s)"
  for E in default paper cascade; do
    echo; echo "## $E"; echo; cat "$OUT/exp-$E/table.md"
    cp "$OUT/exp-$E/plot.png" "$OUT/plot-$E.png"
  done
} > "$OUT/study.md"
# the pairs' figures and the differences against the generators' minutes, as the CPU study's
"$PY" "$(dirname "$0")/../benchmarks/study_compute_curve.py" "$OUT/dubai128-s" --out "$OUT/curve" \
    --xlabel "generator training, GPU minutes" \
    --point "default:$GEN_MINUTES:$OUT/gen-default:$OUT/exp-default" \
    --point "paper:$GEN_MINUTES:$OUT/gen-paper:$OUT/exp-paper" >> "$OUT/study.md"
ELAPSED=$(( $(date +%s) - START ))
stamp "done: $OUT/study.md, $OUT/plot-{default,paper,cascade}.png, $OUT/curve/compute_curve.png"
if [ "$ELAPSED" -gt 600 ]; then
  echo "gpu_study.sh: took $ELAPSED s, more than the 10 minutes aimed at: lower GEN_MINUTES or SEEDS"
fi
