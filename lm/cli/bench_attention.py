"""`python -m lm bench_attention`: attention implementations side by side.

Default: one attention layer's forward + backward per implementation at each --lengths
(step time, compiled temporary memory). --suite=gpu: the train-step MFU of the GPT-2-124M
and LLaMA-1B presets in bfloat16 per implementation and batch-1 KV-cache decode tokens/s
with the fraction of --mem_bw_gbs (launch/gpu_bench.sh); --tiny runs it at toy sizes (the
CPU check of the same code path).
"""

from __future__ import annotations

import json
import sys

from absl import flags

from lm import cli
from lm.tools import attention_bench

_SUITE = flags.DEFINE_enum('suite', 'op', ['op', 'gpu'], 'op: one attention layer per '
                           'implementation and length; gpu: preset MFU and decode.')
_LENGTHS = flags.DEFINE_list('lengths', ['128', '1024', '4096'], 'Sequence lengths (op).')
_IMPLS = flags.DEFINE_list('impls', ['xla', 'blockwise'], 'Implementations to time (op).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per row (op); the median is shown.')
_TINY = flags.DEFINE_bool('tiny', False, 'gpu suite at toy sizes (runs on CPU in seconds).')
_BW = flags.DEFINE_float('mem_bw_gbs', 4800.0, 'Memory bandwidth (GB/s) for the decode bound '
                         '(H200: 4800).')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if _SUITE.value == 'op':
    rows = attention_bench.op_table([int(t) for t in _LENGTHS.value], _IMPLS.value,
                                    repeats=_REPEATS.value)
    print(f"{'impl':<10} {'T':>6} {'fwd+bwd ms':>11} {'temp MiB':>9}")
    for r in rows:
      print(f"{r['impl']:<10} {r['seq_len']:>6} {r['step_ms']:>11.2f} {r['temp_mib']:>9.1f}")
    result = {'op': rows}
  else:
    result = attention_bench.gpu_suite(tiny=_TINY.value, mem_bw_gbs=_BW.value)
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2, default=str)
  sys.stdout.flush()


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
