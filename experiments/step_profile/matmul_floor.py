"""How long a config's train step would take if it did nothing but its matmuls, on one
device (docs/benchmarks.md, "How far the step is from its matmuls").

  taskset -c 0 python experiments/step_profile/matmul_floor.py --config=shakespeare_char \
      --rows=6 [--set=KEY=VALUE ...]

Builds the config's real train step on one CPU device with `--rows` rows per step (a data-
parallel device's share of the batch: 6 of shakespeare_char's 12 on two devices), collects
every dot_general in its jaxpr (inner scans counted by their length), and times one jit'd
program holding exactly those matmuls, with their shapes and dimension numbers, against the
step itself. Pinned to one core, the first figure is a floor for the step on that core: the
model's matmul work at the rate XLA:CPU reaches on these shapes, with no other op.
"""

import argparse
import math
import pathlib
import statistics
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parents[1]), str(_HERE)]  # the repository, and profile_step beside


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='shakespeare_char', help='a module of configs/')
  parser.add_argument('--rows', type=int, default=6, help='rows per step on the one device')
  parser.add_argument('--repeats', type=int, default=30, help='timed runs of each program')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override, its value a Python literal (repeatable)')
  return parser.parse_args()


def _dot_generals(jaxpr, times: int = 1) -> list:
  """(how many times it runs, lhs aval, rhs aval, dimension numbers) of every dot_general,
  descending into sub-jaxprs; a scan's body runs `length` times."""
  from jax.extend import core
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.append((times, eqn.invars[0].aval, eqn.invars[1].aval,
                    eqn.params['dimension_numbers']))
    inner_times = times * eqn.params['length'] if eqn.primitive.name == 'scan' else times
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = sub.jaxpr if isinstance(sub, core.ClosedJaxpr) else sub
        if isinstance(inner, core.Jaxpr):
          found.extend(_dot_generals(inner, inner_times))
  return found


def _flops(lhs, rhs, dimension_numbers) -> int:
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  rhs_free = [n for i, n in enumerate(rhs.shape) if i not in rhs_contract + rhs_batch]
  return 2 * math.prod(lhs.shape) * math.prod(rhs_free)


def _median_s(fn, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  args = _parse()
  from profile_step import load_config  # the same --config / --set as the op profile
  config = load_config(args)
  config.train.batch_size = args.rows
  config.runtime.cpu_devices = 1
  from lm import runtime
  runtime.apply(config.runtime, config.data.cache_dir)
  import jax
  import numpy as np

  from lm.tools import bench
  from lm.train import build
  cfg = build.resolve(config)
  setup = build.build(cfg, vocab_size=bench.tokenizer_vocab_size(cfg))
  steps = cfg.train.steps_per_dispatch  # the program runs this many steps
  state, batches = setup.init_state(), setup.synthetic_batches(np.random.default_rng(0))
  dots = _dot_generals(jax.make_jaxpr(setup.train_step)(state, batches).jaxpr)
  per_step = [(max(1, round(times / steps)), lhs, rhs, dn) for times, lhs, rhs, dn in dots]
  gflop = sum(n * _flops(lhs, rhs, dn) for n, lhs, rhs, dn in per_step) / 1e9
  key = jax.random.key(0)
  specs = [dn for n, _, _, dn in per_step for _ in range(n)]
  operands = [(jax.random.normal(key, lhs.shape), jax.random.normal(key, rhs.shape))
              for n, lhs, rhs, _ in per_step for _ in range(n)]
  matmuls = jax.jit(lambda ops: [jax.lax.dot_general(x, y, dn)
                                 for (x, y), dn in zip(ops, specs, strict=True)])
  matmul_s = _median_s(lambda: matmuls(operands), args.repeats)

  def step():
    nonlocal state
    state, metrics = setup.train_step(state, batches)
    return metrics
  step_s = _median_s(step, max(3, args.repeats // 4)) / steps
  print(f'{args.config}, {args.rows} rows per step on one device: {len(specs)} matmuls, '
        f'{gflop:.3f} GFLOP per step')
  print(f'matmuls alone: {matmul_s * 1e3:.2f} ms per step ({gflop / matmul_s:.1f} GFLOP/s)')
  print(f'the whole step: {step_s * 1e3:.2f} ms (the matmuls are {matmul_s / step_s:.0%} of it)')


if __name__ == '__main__':
  main()
