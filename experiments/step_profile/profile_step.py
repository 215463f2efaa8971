"""Where a config's train step spends its time on CPU, op by op (docs/benchmarks.md, "The
step's ops on machine C").

  python experiments/step_profile/profile_step.py --config=shakespeare_char [--dispatches=3] \
      [--set=runtime.cpu_devices=0 ...]

Builds the config's real train step (lm.train.build, as `python -m lm.bench` does), runs a
few untimed and five timed dispatches on synthetic batches, then records a jax.profiler
trace of `--dispatches` more and sums each XLA:CPU thunk's duration per device thread,
grouping numbered instances (`ynn_fusion.53` -> `ynn_fusion`). The trace's own overhead
makes the traced step slower than the untimed one; compare the shares, not the sum.
"""

import argparse
import collections
import glob
import gzip
import importlib
import json
import pathlib
import re
import sys
import tempfile
import time

_REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_REPO))

# Executor and host events that hold the ops inside them: listed, not summed with the ops.
_WRAPPERS = ('ThunkExecutor', 'Pjit', '$', 'CommonPjRt', 'Wait', 'Rendezvous', 'Slinky')


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='shakespeare_char', help='a module of configs/')
  parser.add_argument('--dispatches', type=int, default=3, help='dispatches in the trace')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override, its value a Python literal (repeatable)')
  return parser.parse_args()


def load_config(args: argparse.Namespace):
  """The --config module's config with the --set overrides (matmul_floor.py takes it too)."""
  import ast

  from lm.config import override  # checks each key exists and takes its value's type
  config = importlib.import_module(f'configs.{args.config}').get_config()
  return override(config, {key: ast.literal_eval(value) if value else '' for key, value in
                           (item.split('=', 1) for item in args.set)})


def _thread_totals(trace_dir: str, steps: int) -> dict[str, collections.Counter]:
  """{thread name: {op group: ms per step}} from the trace's perfetto json."""
  path = sorted(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True))[-1]
  events = json.load(gzip.open(path))['traceEvents']
  names = {(e['pid'], e['tid']): e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get('ph') == 'X':
      group = e['name'].split(' ')[0] if e['name'].startswith(_WRAPPERS) else re.sub(
          r'\.\d+$', '', e['name'])
      totals[names.get((e['pid'], e['tid']), str(e['tid']))][group] += e['dur'] / 1e3 / steps
  return totals


def main() -> None:
  args = _parse()
  config = load_config(args)
  from lm import runtime
  runtime.apply(config.runtime, config.data.cache_dir)  # the devices, before jax starts them
  import jax
  import numpy as np

  from lm.tools import bench
  from lm.train import build
  cfg = build.resolve(config)
  setup = build.build(cfg, vocab_size=bench.tokenizer_vocab_size(cfg))
  state, rng, k = setup.init_state(), np.random.default_rng(0), cfg.train.steps_per_dispatch
  for _ in range(3):  # compilation and warm-up
    state, metrics = setup.train_step(state, setup.synthetic_batches(rng))
    jax.block_until_ready(metrics)
  untraced = []
  for _ in range(5):
    batches = setup.synthetic_batches(rng)
    jax.block_until_ready(batches)
    start = time.perf_counter()
    state, metrics = setup.train_step(state, batches)
    jax.block_until_ready(metrics)
    untraced.append((time.perf_counter() - start) / k * 1e3)
  data = [setup.synthetic_batches(rng) for _ in range(args.dispatches)]
  jax.block_until_ready(data)
  trace_dir = tempfile.mkdtemp(prefix='lm-step-profile-')
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  for batches in data:
    state, metrics = setup.train_step(state, batches)
  jax.block_until_ready(metrics)
  traced = (time.perf_counter() - start) / (args.dispatches * k) * 1e3
  jax.profiler.stop_trace()
  print(f'step: untraced {", ".join(f"{t:.1f}" for t in untraced)} ms; traced {traced:.1f} ms')
  for thread, groups in _thread_totals(trace_dir, args.dispatches * k).items():
    ops = sum(v for g, v in groups.items() if not g.startswith(_WRAPPERS))
    if ops < 0.5:  # host threads: no device ops
      continue
    print(f'== {thread}: ops {ops:.2f} ms/step')
    for group, ms in groups.most_common(20):
      print(f'  {ms:8.2f}  {group}')


if __name__ == '__main__':
  main()
