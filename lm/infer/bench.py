"""Decode speed of a model: time to first token, KV-cache vs naive tokens/s, bytes read.

The library half of `python -m lm bench_decode` (lm/cli/bench_decode.py; no flags here, so
tests and notebooks can import it). Parameters are random: speed does not depend on their values.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm.data import prepare
from lm.errors import InputError
from lm.infer.decode import Decoder
from lm.infer.sampling import SamplingConfig
from lm.model import ModelConfig, ModelDef
from lm.model.quantize import quantize as quantize_params
from lm.model.quantize import weight_bytes


def _vocab_size(cfg, flag: int) -> int:
  if flag:
    return flag
  if cfg.model.vocab_size:
    return cfg.model.vocab_size
  tok = cfg.data.tokenizer
  if tok.kind == 'sentencepiece':
    return tok.vocab_size
  if tok.kind == 'byte':
    return 259
  return prepare(cfg.data, seq_len=cfg.data.seq_len, log=lambda m: None).tokenizer.vocab_size


def bytes_read_per_step(model_def, params: dict, batch: int, cache_len: int) -> dict[str, int]:
  """Bytes one decode step reads: every weight it multiplies by (the embedding table only
  for the rows it looks up, unless it is also the output matrix) and the whole KV cache."""
  cfg = model_def.cfg
  weights = weight_bytes(params)
  looked_up = ['pos_embed'] + ([] if cfg.tie_embeddings else ['embed', 'embed_scale'])
  for name in looked_up:
    if params.get(name) is not None:
      x = params[name]
      weights -= x.size * x.dtype.itemsize
      weights += batch * (x.size // x.shape[0]) * x.dtype.itemsize
  kv = 2 * cfg.num_layers * batch * cache_len * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(
      cfg.jnp_dtype).itemsize
  return {'weights': int(weights), 'kv_cache': int(kv), 'total': int(weights + kv)}


def run_benchmark(config, *, batch_sizes: list[int], prompt_len: int, new_tokens: int,
                  naive_tokens: int, repeats: int, quantize: str = 'none', vocab_size: int = 0,
                  mem_bw_gbs: float = 0.0) -> dict:
  """Times KV-cache and naive decoding of the config's model; returns one row per batch."""
  cfg = config_lib.resolve(config, num_devices=jax.device_count())
  cfg.model.vocab_size = _vocab_size(cfg, vocab_size)
  cache_len = prompt_len + new_tokens
  model_cfg = ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len)
  if model_cfg.position == 'learned' and cache_len > model_cfg.max_len:
    raise InputError(f'prompt_len + new_tokens = {cache_len} exceeds the model max_len '
                     f'{model_cfg.max_len} (learned positions)')
  float_def = ModelDef.create(model_cfg)
  model_def, params = quantize_params(float_def, float_def.init_params(jax.random.key(0)),
                                      quantize)
  decoder = Decoder(model_def, cache_len=cache_len)
  greedy = SamplingConfig(temperature=0.0)

  @jax.jit
  def naive_step(params, tokens_BS, length):
    """One token by full recomputation of the [B, cache_len] buffer (no cache)."""
    logits_BSV = model_def.merge(params)(tokens_BS)
    next_B = jnp.argmax(logits_BSV[:, length - 1], axis=-1).astype(jnp.int32)
    return tokens_BS.at[:, length].set(next_B)

  rng = np.random.default_rng(0)
  rows = []
  for b in batch_sizes:
    prompts = rng.integers(3, model_cfg.vocab_size, (b, prompt_len)).tolist()
    ttft, decode = [], []
    for i in range(repeats + 1):  # the first run compiles
      t0 = time.perf_counter()
      steps = decoder.stream(params, prompts, max_new_tokens=new_tokens, sampling=greedy)
      next(steps)
      t1 = time.perf_counter()
      n = sum(1 for _ in steps)
      t2 = time.perf_counter()
      assert n == new_tokens - 1
      if i:
        ttft.append(t1 - t0)
        decode.append((t2 - t1) / n)
    step_s = statistics.median(decode)
    row = {'batch': b, 'ttft_ms': statistics.median(ttft) * 1e3, 'step_ms': step_s * 1e3,
           'kv_tokens_per_sec': b / step_s,
           'bytes_per_step': bytes_read_per_step(model_def, params, b, cache_len)}
    row['bytes_per_token'] = row['bytes_per_step']['total'] / b
    row['achieved_gbs'] = row['bytes_per_step']['total'] / step_s / 1e9
    if mem_bw_gbs:
      row['bandwidth_fraction'] = row['achieved_gbs'] / mem_bw_gbs
    if naive_tokens:
      buffer = np.zeros((b, cache_len), np.int32)
      buffer[:, :prompt_len] = prompts
      times = []
      for i in range(repeats + 1):
        tokens = jnp.asarray(buffer)
        jax.block_until_ready(naive_step(params, tokens, prompt_len) if not i else tokens)
        t0 = time.perf_counter()
        for j in range(naive_tokens):
          tokens = naive_step(params, tokens, prompt_len + j)
        jax.block_until_ready(tokens)
        if i:
          times.append((time.perf_counter() - t0) / naive_tokens)
      row['naive_step_ms'] = statistics.median(times) * 1e3
      row['naive_tokens_per_sec'] = b / statistics.median(times)
      row['kv_speedup'] = row['kv_tokens_per_sec'] / row['naive_tokens_per_sec']
    rows.append(row)
  device = jax.devices()[0]
  return {'device': f'{jax.device_count()} x {getattr(device, "device_kind", device.platform)}',
          'jax': jax.__version__, 'params': model_cfg.param_count(), 'quantize': quantize,
          'weight_bytes': weight_bytes(params), 'prompt_len': prompt_len,
          'new_tokens': new_tokens, 'cache_len': cache_len, 'naive_tokens': naive_tokens,
          'mem_bw_gbs': mem_bw_gbs, 'rows': rows}
