"""Benchmark decoding: `python -m lm.bench_decode --config=configs/X.py [--mem_bw_gbs=...]`.

For each batch size: time to first token (prefill of the prompts and the first sampled
token) and decode tokens/s with the KV cache (lm.infer.Decoder.stream, the path
lm.generate uses), against naive decoding that recomputes the whole sequence for every
token (one full forward per token, as the training loop's sample does). It also counts the
bytes a decode step reads (the weights it multiplies by plus the whole KV cache, which
attention reads up to its full length) and, with --mem_bw_gbs, the fraction of a
memory-bandwidth bound that the measured step rate implies. Parameters are random: speed
does not depend on their values.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/default.py', 'Experiment config file (its model is benchmarked); '
    '--config.<field>=<v> overrides.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes (prompts decoded '
                                 'together) to measure, comma-separated.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 64, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'Tokens generated per row (KV cache).')
_NAIVE_TOKENS = flags.DEFINE_integer(
    'naive_tokens', 16, 'Tokens generated per row by the naive full-recomputation decoder; '
    '0 skips it.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats of each measurement (median).')
_QUANTIZE = flags.DEFINE_enum('quantize', 'none', ['none', 'int8'],
                              'Weight quantization of the benchmarked model.')
_MEM_BW = flags.DEFINE_float(
    'mem_bw_gbs', 0.0, 'Memory bandwidth of the device in GB/s (e.g. 3350 for an H100 SXM); '
    'when given, the fraction of the bandwidth bound a decode step reaches is printed.')
_VOCAB = flags.DEFINE_integer('vocab_size', 0, 'Vocabulary size when config.model.vocab_size '
                              'is 0; default: data.tokenizer.vocab_size (sentencepiece), 259 '
                              '(byte), else the prepared tokenizer\'s.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


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
  from lm.data import prepare
  return prepare(cfg.data, seq_len=cfg.data.seq_len, log=lambda m: None).tokenizer.vocab_size


def bytes_read_per_step(model_def, params: dict, batch: int, cache_len: int) -> dict[str, int]:
  """Bytes one decode step reads: every weight it multiplies by (the embedding table only
  for the rows it looks up, unless it is also the output matrix) and the whole KV cache."""
  import jax.numpy as jnp

  from lm.infer.quantize import weight_bytes
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
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lm import config as config_lib
  from lm.infer import Decoder, SamplingConfig
  from lm.infer.quantize import quantize as quantize_params
  from lm.infer.quantize import weight_bytes
  from lm.model import ModelConfig
  from lm.train.state import ModelDef

  cfg = config_lib.resolve(config, num_devices=jax.device_count())
  cfg.model.vocab_size = _vocab_size(cfg, vocab_size)
  cache_len = prompt_len + new_tokens
  model_cfg = ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len)
  if model_cfg.position == 'learned' and cache_len > model_cfg.max_len:
    raise ValueError(f'prompt_len + new_tokens = {cache_len} exceeds the model max_len '
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from lm import runtime
  config = runtime.config_from_flag(_CONFIG)  # before jax is imported
  try:
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError('must be positive integers')
  except ValueError as e:
    print(f'error: --batch_sizes={",".join(_BATCH_SIZES.value)}: {e}; e.g. --batch_sizes=1,16',
          file=sys.stderr)
    sys.exit(1)
  for name, flag in (('prompt_len', _PROMPT_LEN), ('new_tokens', _NEW_TOKENS),
                     ('repeats', _REPEATS)):
    if flag.value < 1 or (name == 'new_tokens' and flag.value < 2):
      print(f'error: --{name}={flag.value} is too small', file=sys.stderr)
      sys.exit(1)
  try:
    r = run_benchmark(config, batch_sizes=batch_sizes, prompt_len=_PROMPT_LEN.value,
                      new_tokens=_NEW_TOKENS.value, naive_tokens=_NAIVE_TOKENS.value,
                      repeats=_REPEATS.value, quantize=_QUANTIZE.value, vocab_size=_VOCAB.value,
                      mem_bw_gbs=_MEM_BW.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f"device: {r['device']} (jax {r['jax']})")
  print(f"model: {r['params']:,} parameters, weights {r['weight_bytes']:,} bytes "
        f"({r['quantize']}); prompt {r['prompt_len']} + {r['new_tokens']} new tokens "
        f"(cache {r['cache_len']})")
  for row in r['rows']:
    by = row['bytes_per_step']
    print(f"batch {row['batch']:>3}: time to first token {row['ttft_ms']:.1f} ms; KV cache "
          f"{row['kv_tokens_per_sec']:,.0f} tokens/s ({row['step_ms']:.2f} ms/step)" +
          (f"; naive {row['naive_tokens_per_sec']:,.0f} tokens/s -> {row['kv_speedup']:.1f}x"
           if 'naive_tokens_per_sec' in row else ''))
    print(f"           reads {by['total']:,} bytes/step (weights {by['weights']:,}, KV cache "
          f"{by['kv_cache']:,}) = {row['bytes_per_token']:,.0f} bytes/token; "
          f"{row['achieved_gbs']:.1f} GB/s" +
          (f" = {100 * row['bandwidth_fraction']:.1f}% of {r['mem_bw_gbs']:g} GB/s"
           if 'bandwidth_fraction' in row else ''))
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(r, f, indent=2)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
