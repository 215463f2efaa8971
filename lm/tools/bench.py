"""Benchmark the train step (`python -m lm bench`, lm/cli/bench.py): the median step time
over timed dispatches of the real jit'd train step (lm.train.build, what `python -m
lm.main` runs: the LoRA optimizer, the preset's batch rule, the task's batch) on synthetic
batches of the config's shapes, the tokens/s that gives, and the model FLOPs utilisation
against this machine's peak matmul rate, which it measures itself.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from lm.config import override
from lm.errors import ConfigError
from lm.train import build, finetune


def peak_matmul_flops(n: int, dtype: str, repeats: int = 10) -> float:
  """Measured FLOP/s of the whole machine: one n x n x n matmul on every device at once
  (median of `repeats`), so devices that share cores are not counted twice."""
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


def tokenizer_vocab_size(cfg, vocab_size: int = 0) -> int:
  """The tokenizer's vocabulary: the config's, `vocab_size`, else the data's (prepared as
  training prepares it, from its cache when it is there)."""
  if cfg.model.vocab_size:
    return int(cfg.model.vocab_size)
  if vocab_size:
    return vocab_size
  data = build.prepare_data(cfg, base_tokenizer=finetune.base_tokenizer(cfg), log=lambda _: None)
  return data.tokenizer.vocab_size


def run_benchmark(config, *, dispatches: int, warmup: int, vocab_size: int = 0,
                  peak_n: int = 2048) -> dict:
  """Times the configured train step; returns step time, tokens/s, FLOPs and MFU."""
  cfg = build.resolve(config)
  setup = build.build(cfg, vocab_size=tokenizer_vocab_size(cfg, vocab_size))
  cfg, model_cfg = setup.config, setup.model_def.cfg
  state = setup.init_state()
  k, b, t = cfg.train.steps_per_dispatch, cfg.train.batch_size, cfg.data.seq_len
  rng = np.random.default_rng(cfg.seed)

  t0 = time.perf_counter()
  for _ in range(warmup):
    state, metrics = setup.train_step(state, setup.synthetic_batches(rng))
    jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(dispatches):
    data = setup.synthetic_batches(rng)
    jax.block_until_ready(data)
    t1 = time.perf_counter()
    state, metrics = setup.train_step(state, data)
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


def dense_equivalent(config):
  """The config with its MoE layers replaced by dense MLPs of the same active parameters
  (per token): mlp_dim = experts_per_token x the expert hidden size (+ the shared expert's);
  only the router's D x E weights are not matched."""
  moe = config.model.moe
  per_token = moe.top_k if moe.routing != 'domain' else moe.num_experts // moe.num_domains
  mlp_dim = per_token * (moe.expert_mlp_dim or config.model.mlp_dim)
  if moe.shared_expert:
    mlp_dim += config.model.mlp_dim
  if moe.every != 1:
    raise ConfigError('--moe_vs_dense needs model.moe.every=1 (every layer MoE) to build the '
                      'dense model of equal active parameters.')
  return override(ConfigDict(config.to_dict()),
                  {'model.moe.num_experts': 0, 'model.mlp_dim': mlp_dim})


def moe_vs_dense(config, **kwargs) -> dict:
  """run_benchmark of an MoE config and of its dense equivalent, one after the other in
  this process: {'moe': ..., 'dense': ..., 'ratio': MoE tokens/s over dense tokens/s}."""
  if not config.model.moe.num_experts:
    raise ConfigError('--moe_vs_dense needs a config with model.moe.num_experts > 0.')
  moe = run_benchmark(config, **kwargs)
  dense = run_benchmark(dense_equivalent(config), **kwargs)
  return {'moe': moe, 'dense': dense, 'ratio': moe['tokens_per_sec'] / dense['tokens_per_sec']}
