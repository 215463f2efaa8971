#!/usr/bin/env bash
# Prune the trained default model to half its parameters, then retrain it three ways at equal
# tokens (README.md). Usage, from the repository root:
#   OUT=/tmp/prune_exp STEPS=150 bash experiments/prune_distill/run.sh
set -euo pipefail
OUT=${OUT:-/tmp/prune_exp}
STEPS=${STEPS:-150}
PY=${PY:-python}
mkdir -p "$OUT"

# 1. The teacher: configs/default.py as it is (1200 steps of 16 x 128 tokens).
[ -f "$OUT/teacher/config.json" ] || $PY -m lm train --config=configs/default.py --workdir="$OUT/teacher"

# 2. Prune to 50% of its parameters: embedding channels 192 -> 128, MLP neurons 512 -> 256
#    (layers and heads kept; head size 32 kept, so 6 heads x 32 = 192 > width).
[ -f "$OUT/pruned/config.json" ] || $PY -m lm prune --workdir="$OUT/teacher" --out="$OUT/pruned" \
  --width=128 --mlp_dim=256
SMALL="--config.model.width=128 --config.model.mlp_dim=256 --config.model.head_dim=32"
COMMON="--config=configs/default.py --config.train.steps=$STEPS --config.optimizer.warmup_steps=20
  --config.train.eval_every=50 --config.checkpoint.every=$STEPS --config.train.sample_tokens=0"

# 3. Three students of the same shape, the same data order, steps and schedule, trained side
#    by side (one process each; the machine is shared, so this only orders the wall clock):
train() { [ -f "$OUT/$1/checkpoints/$STEPS/_CHECKPOINT_METADATA" ] || $PY -m lm train $COMMON $SMALL --workdir="$OUT/$1" "${@:2}" > "$OUT/$1.log" 2>&1; }
train finetune --config.init_from="$OUT/pruned" &                       # pruned, no teacher
train scratch &                                                         # same size, random init
train distill --config.init_from="$OUT/pruned" --config.train.task=distill \
  --config.train.distill.teacher="$OUT/teacher" --config.train.distill.alpha=1.0 &  # pruned + KD
wait

# 4. Every model scored on the same validation batches, float and int8.
for run in teacher pruned finetune scratch distill; do
  [ -f "$OUT/$run.quantize.json" ] || $PY -m lm quantize --workdir="$OUT/$run" --json="$OUT/$run.quantize.json"
done
$PY experiments/prune_distill/report.py "$OUT"
