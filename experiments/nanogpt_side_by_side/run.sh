#!/usr/bin/env bash
# nanoGPT's whole Shakespeare CPU run and ours, back to back in one session (README.md).
# Usage, from the repository root (nanoGPT set up as ../shared/notes/peers.md says):
#   NANOGPT_DIR=/path/to/nanoGPT OUT=/tmp/side_by_side bash experiments/nanogpt_side_by_side/run.sh
# Runs, in this order: nanoGPT's 2000 iterations; configs/shakespeare_char.py with fresh
# data and compilation caches (cold); the same again reusing both caches (warm); the
# speedrun config (its Muon programs compiled: the other runs' cache lacks them), and the
# speedrun again (warm). Then report.py writes $OUT/table.md. About 7-9 minutes on an idle
# 2-core machine.
set -euo pipefail
: "${NANOGPT_DIR:?set NANOGPT_DIR to a nanoGPT checkout (../shared/notes/peers.md)}"
OUT=${OUT:-/tmp/side_by_side}
PY=${PY:-python}                       # our interpreter (lm installed or PYTHONPATH set)
TORCH_PY=${TORCH_PY:-$PY}              # nanoGPT's (torch + numpy)
DATA=${DATA:-$(cd "$(dirname "$0")/../.." && realpath -m ../shared/data/tinyshakespeare.txt)}
NANOGPT_DIR=$(realpath "$NANOGPT_DIR")
[ -f "$DATA" ] || { echo "DATA=$DATA: no such file; set DATA to tinyshakespeare.txt" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
CACHE="$OUT/cache"                     # data + compilation cache, fresh for the cold run

# timed NAME DIR CMD...: the whole command's wall and CPU seconds -> $OUT/NAME.time, log -> NAME.log
timed() {
  local name=$1 dir=$2; shift 2
  echo "== $name: $*"
  (cd "$dir" && /usr/bin/time -f '%e %U %S' -o "$OUT/$name.time" "$@") > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed; see $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2; exit 1; }
  echo "   $(cat "$OUT/$name.time") (wall, user, sys s)"
}

uptime > "$OUT/uptime_start.txt"
if [ ! -f "$NANOGPT_DIR/data/shakespeare_char/train.bin" ]; then
  cp "$DATA" "$NANOGPT_DIR/data/shakespeare_char/input.txt"
  (cd "$NANOGPT_DIR" && $TORCH_PY data/shakespeare_char/prepare.py > /dev/null)
fi
timed nanogpt "$NANOGPT_DIR" $TORCH_PY train.py config/train_shakespeare_char.py --device=cpu \
  --compile=False --eval_iters=20 --log_interval=100 --block_size=64 --batch_size=12 \
  --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 \
  --out_dir="$OUT/nanogpt_out"
COMMON=(--config.data.path="$DATA" --config.data.cache_dir="$CACHE")
timed cold "$PWD" $PY -m lm.main --config=configs/shakespeare_char.py --workdir="$OUT/cold" "${COMMON[@]}"
timed warm "$PWD" $PY -m lm.main --config=configs/shakespeare_char.py --workdir="$OUT/warm" "${COMMON[@]}"
timed speedrun "$PWD" $PY -m lm.main --config=configs/shakespeare_speedrun.py --workdir="$OUT/speedrun" "${COMMON[@]}"
timed speedrun_warm "$PWD" $PY -m lm.main --config=configs/shakespeare_speedrun.py --workdir="$OUT/speedrun_warm" "${COMMON[@]}"
uptime > "$OUT/uptime_end.txt"
$PY "$(dirname "$0")/report.py" "$OUT"
