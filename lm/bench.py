"""Benchmark the train step: `python -m lm.bench --config=configs/X.py [--config.a.b=v]`.

Measures the median step time over timed dispatches of the real jit'd train step on
synthetic tokens of the config's shapes, the tokens/s that gives, and the model FLOPs
utilisation against this machine's peak matmul rate, which it measures itself.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

if __name__ == '__main__':  # flags exist only for the command line
  _CONFIG = config_flags.DEFINE_config_file(
      'config', 'configs/default.py', 'Experiment config file; --config.<field>=<v> overrides.')
  _DISPATCHES = flags.DEFINE_integer('dispatches', 10, 'Timed dispatches (each runs '
                                     'train.steps_per_dispatch steps); the median is reported.')
  _WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed dispatches first (compilation, caches).')
  _VOCAB = flags.DEFINE_integer('vocab_size', 0, 'Vocabulary size when config.model.vocab_size '
                                'is 0 (default: the config\'s tokenizer, prepared if needed).')
  _PEAK_N = flags.DEFINE_integer('peak_matmul_size', 2048, 'Square matmul size used to measure '
                                 'the machine\'s peak FLOP/s (one such matmul per device).')
  _JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def peak_matmul_flops(n: int, dtype: str, repeats: int = 10) -> float:
  """Measured FLOP/s of the whole machine: one n x n x n matmul on every device at once
  (median of `repeats`), so devices that share cores are not counted twice."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  devices = jax.devices()
  sharding = NamedSharding(Mesh(devices, ('d',)), PartitionSpec('d'))
  shape = (len(devices), n, n)
  a = jax.device_put(jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype),
                     sharding)
  b = jax.device_put(jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(dtype),
                     sharding)
  mm = jax.jit(lambda x, y: jnp.einsum('dij,djk->dik', x, y), out_shardings=sharding)
  mm(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return len(devices) * 2 * n**3 / statistics.median(times)


def run_benchmark(config, *, dispatches: int, warmup: int, vocab_size: int = 0,
                  peak_n: int = 2048) -> dict:
  """Times the configured train step; returns step time, tokens/s, FLOPs and MFU."""
  import jax
  import numpy as np

  from lm import config as config_lib
  from lm import parallel
  from lm.model import ModelConfig, ModelDef
  from lm.train.optimizer import build_optimizer
  from lm.train.state import init_state, state_shardings
  from lm.train.step import make_train_step

  cfg = config_lib.resolve(config, num_devices=jax.device_count())
  if not cfg.model.vocab_size:
    if not vocab_size:
      from lm.data import prepare
      vocab_size = prepare(cfg.data, seq_len=cfg.data.seq_len, log=lambda m: None
                           ).tokenizer.vocab_size
    cfg.model.vocab_size = vocab_size
  model_cfg = ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len)
  mesh = parallel.build_mesh(cfg.mesh)
  model_def = ModelDef.create(model_cfg)
  optimizer, schedule = build_optimizer(cfg.optimizer, cfg.train.steps)
  shardings = state_shardings(model_def, optimizer, mesh, parallel.rules_for(cfg.mesh))
  state = init_state(model_def, optimizer, cfg.seed, shardings)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1)
  step_fn = make_train_step(model_def, optimizer, schedule, grad_accum=cfg.train.grad_accum,
                            mesh=mesh, rules=parallel.rules_for(cfg.mesh), shardings=shardings,
                            batch_sharding=batch_sharding)
  k, b, t = cfg.train.steps_per_dispatch, cfg.train.batch_size, cfg.data.seq_len
  rng = np.random.default_rng(cfg.seed)

  def batches():
    tokens = rng.integers(0, model_cfg.vocab_size, (k, b, t + 1), dtype=np.int32)
    host = {'inputs': tokens[..., :-1], 'targets': tokens[..., 1:],
            'segment_ids': np.ones((k, b, t), np.int32),
            'positions': np.broadcast_to(np.arange(t, dtype=np.int32), (k, b, t)).copy(),
            'weights': np.ones((k, b, t), np.float32)}
    return jax.device_put(host, batch_sharding)

  t0 = time.perf_counter()
  for _ in range(warmup):
    state, metrics = step_fn(state, batches())
    jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(dispatches):
    data = batches()
    jax.block_until_ready(data)
    t1 = time.perf_counter()
    state, metrics = step_fn(state, data)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t1) / k)
  step_s = statistics.median(times)
  tokens_per_sec = b * t / step_s
  flops_per_token = model_cfg.flops_per_token(t)
  peak = peak_matmul_flops(peak_n, model_cfg.dtype)
  device = jax.devices()[0]
  return {
      'device': f'{jax.device_count()} x {getattr(device, "device_kind", device.platform)}',
      'jax': jax.__version__, 'params': model_cfg.param_count(),
      'flops_per_token': flops_per_token, 'batch': b, 'seq_len': t,
      'steps_per_dispatch': k, 'step_ms_median': step_s * 1e3,
      'step_ms_min': min(times) * 1e3, 'step_ms_max': max(times) * 1e3,
      'tokens_per_sec': tokens_per_sec, 'model_tflops_per_sec': flops_per_token *
      tokens_per_sec / 1e12, 'peak_matmul_tflops': peak / 1e12,
      'mfu': flops_per_token * tokens_per_sec / peak, 'warmup_s': compile_s,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from lm import cli
  config = cli.config_from_flag(_CONFIG)  # before jax starts its devices
  r = run_benchmark(config, dispatches=_DISPATCHES.value, warmup=_WARMUP.value,
                    vocab_size=_VOCAB.value, peak_n=_PEAK_N.value)
  print(f"device: {r['device']} (jax {r['jax']})")
  print(f"model: {r['params']:,} parameters, {r['flops_per_token']:,} FLOPs/token; "
        f"batch {r['batch']} x {r['seq_len']}, {r['steps_per_dispatch']} steps/dispatch")
  print(f"step time: median {r['step_ms_median']:.2f} ms (min {r['step_ms_min']:.2f}, "
        f"max {r['step_ms_max']:.2f}) over {_DISPATCHES.value} dispatches")
  print(f"throughput: {r['tokens_per_sec']:,.0f} tokens/s, "
        f"{r['model_tflops_per_sec'] * 1e3:.1f} model GFLOP/s")
  print(f"peak matmul (measured): {r['peak_matmul_tflops'] * 1e3:.1f} GFLOP/s -> "
        f"MFU {100 * r['mfu']:.1f}%")
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(r, f, indent=2)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
