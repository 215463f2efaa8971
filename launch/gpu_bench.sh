#!/usr/bin/env bash
# One-command GPU benchmark of the attention implementations (fits in ~8 minutes on one
# H100/H200): train-step MFU of the GPT-2-124M and LLaMA-1B shapes in bfloat16 for each
# model.attention (xla, blockwise, cudnn, flash), then batch-1 KV-cache decode tokens/s
# with the fraction of the memory-bandwidth bound. Results: stdout and $OUT_JSON.
#   launch/gpu_bench.sh                 # on the GPU machine, from the repository root
#   launch/gpu_bench.sh --tiny          # toy sizes: the CPU check of the same code path
# Set MEM_BW_GBS for another GPU (H100 SXM: 3350; H200: 4800).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT_JSON=${OUT_JSON:-gpu_bench.json}
exec timeout 480 "$PYTHON" -m lm bench_attention --suite=gpu --mem_bw_gbs="${MEM_BW_GBS:-4800}" \
  --json="$OUT_JSON" "$@"
