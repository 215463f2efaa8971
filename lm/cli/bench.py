"""`python -m lm bench --config=configs/X.py [--config.a.b=v]` (or `python -m lm.bench`):
time the train step.

Measures the median step time over timed dispatches of the real jit'd train step (the one
`python -m lm.main` runs, from lm.train.build) on synthetic batches of the config's shapes,
the tokens/s that gives, and the model FLOPs utilisation against this machine's peak
matmul rate, which it measures itself.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from lm import cli
from lm import config as config_lib
from lm.tools import bench

_CONFIG = config_lib.define_config_flag(
    'config', 'configs/default.py', 'Experiment config file; --config.<field>=<v> overrides.')
_DISPATCHES = flags.DEFINE_integer('dispatches', 10, 'Timed dispatches (each runs '
                                   'train.steps_per_dispatch steps); the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed dispatches first (compilation, caches).')
_VOCAB = flags.DEFINE_integer('vocab_size', 0, 'Vocabulary size when config.model.vocab_size '
                              'is 0 (default: the config\'s tokenizer, prepared if needed).')
_PEAK_N = flags.DEFINE_integer('peak_matmul_size', 2048, 'Square matmul size used to measure '
                               'the machine\'s peak FLOP/s (one such matmul per device).')
_MOE_VS_DENSE = flags.DEFINE_bool(
    'moe_vs_dense', False, 'Also time the dense model with the MoE model\'s active parameters '
    '(mlp_dim = top_k x the expert size) in the same run and print the tokens/s ratio.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  config = cli.config_from_flag(_CONFIG)  # before jax starts its devices
  kwargs = dict(dispatches=_DISPATCHES.value, warmup=_WARMUP.value, vocab_size=_VOCAB.value,
                peak_n=_PEAK_N.value)
  if _MOE_VS_DENSE.value:
    r = bench.moe_vs_dense(config, **kwargs)
    for name in ('moe', 'dense'):
      print(f'== {name}')
      _print(r[name])
    print(f"MoE / dense tokens/s: {r['ratio']:.2f}x")
  else:
    r = bench.run_benchmark(config, **kwargs)
    _print(r)
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(r, f, indent=2)
  sys.stdout.flush()


def _print(r: dict) -> None:
  print(f"device: {r['device']} (jax {r['jax']})")
  print(f"model: {r['params']:,} parameters, {r['flops_per_token']:,} FLOPs/token; "
        f"batch {r['batch']} x {r['seq_len']}, {r['steps_per_dispatch']} steps/dispatch")
  print(f"step time: median {r['step_ms_median']:.2f} ms (min {r['step_ms_min']:.2f}, "
        f"max {r['step_ms_max']:.2f}) over {_DISPATCHES.value} dispatches")
  print(f"throughput: {r['tokens_per_sec']:,.0f} tokens/s, "
        f"{r['model_tflops_per_sec'] * 1e3:.1f} model GFLOP/s")
  print(f"peak matmul (measured): {r['peak_matmul_tflops'] * 1e3:.1f} GFLOP/s -> "
        f"MFU {100 * r['mfu']:.1f}%")


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
