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


def _model_config(config, vocab_size: int, cache_len: int) -> tuple[ModelConfig, int]:
  """The benchmarked model's config, and the cache length, checked against learned positions."""
  cfg = config_lib.resolve(config, num_devices=jax.device_count())
  cfg.model.vocab_size = _vocab_size(cfg, vocab_size)
  model_cfg = ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len)
  if model_cfg.position == 'learned' and cache_len > model_cfg.max_len:
    raise InputError(f'prompt_len + new_tokens = {cache_len} exceeds the model max_len '
                     f'{model_cfg.max_len} (learned positions)')
  return model_cfg, cache_len


def run_benchmark(config, *, batch_sizes: list[int], prompt_len: int, new_tokens: int,
                  naive_tokens: int, repeats: int, quantize: str = 'none', vocab_size: int = 0,
                  mem_bw_gbs: float = 0.0) -> dict:
  """Times KV-cache and naive decoding of the config's model; returns one row per batch."""
  model_cfg, cache_len = _model_config(config, vocab_size, prompt_len + new_tokens)
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


def _slot_generate(slot_decoder, params, prompts: list[list[int]], new_tokens: int,
                   steps_per_call: int) -> list[list[int]]:
  """Greedy tokens of `prompts` through the serving engine's device work (lm.serve.engine):
  each prompt prefilled chunk by chunk into its own row and inserted into a slot, then every
  slot decoded `steps_per_call` tokens per dispatch. No end-of-text stops a row."""
  from lm.infer.slots import empty_state  # (a cycle otherwise: slots imports decode)
  greedy = SamplingConfig(temperature=0.0)
  cache, state = slot_decoder.new_cache(), empty_state(slot_decoder.slots)
  out = []
  for slot, prompt in enumerate(prompts):
    row = slot_decoder.new_row()
    for start in range(0, len(prompt), slot_decoder.chunk):
      _, last_V, row = slot_decoder.prefill_chunk(params, row, prompt, start)
    token = slot_decoder.first_token(last_V, 0, greedy)[0]
    cache = slot_decoder.insert(cache, row, slot)
    state['tokens'][slot], state['positions'][slot], state['steps'][slot] = token, len(prompt), 1
    state['left'][slot], state['active'][slot] = new_tokens - 1, True
    out.append([token])
  while state['active'].any():
    (tokens_KB, *_), state, cache = slot_decoder.steps(params, cache, state, steps_per_call)
    for slot, row in enumerate(out):
      row.extend(int(t) for t in tokens_KB[:, slot] if t >= 0)
  return out


def run_vs_transformers(config, *, batch_sizes: list[int], prompt_len: int, new_tokens: int,
                        repeats: int, vocab_size: int = 0, steps_per_call: int = 8) -> dict:
  """Greedy decoding of the config's model (random weights) by lm and by Hugging Face
  transformers' `generate` (torch, CPU) on the same weights, side by side in this process.

  The weights go to a temporary HF directory through lm.compat.hf.write_hf_model (what
  `lm convert to-hf` writes) and are loaded with transformers' from_pretrained. Every
  figure is a whole call — prefill of `prompt_len` tokens and `new_tokens` new tokens per
  row, no end-of-text — timed the same way, the three in turn within every repeat (so
  load changes hit them alike), best of `repeats` after one untimed (compiling) call:
  lm's Decoder.generate (what `lm generate` runs), lm's serving engine's device work
  (slots prefilled in chunks, `steps_per_call` decode steps per dispatch), transformers.
  Also reports how many of lm's tokens equal transformers' (random weights give nearly
  flat logits, where float rounding can flip an argmax between frameworks)."""
  import tempfile

  try:
    import torch
    import transformers
  except ImportError as e:
    raise InputError(f'--vs_transformers needs torch and transformers ({e}); pip install '
                     'torch transformers') from None
  from lm.compat.hf import write_hf_model
  from lm.infer.slots import SlotDecoder

  model_cfg, cache_len = _model_config(config, vocab_size, prompt_len + new_tokens)
  model_def = ModelDef.create(model_cfg)
  params = model_def.init_params(jax.random.key(0))
  decoder = Decoder(model_def, cache_len=cache_len)
  greedy = SamplingConfig(temperature=0.0)
  with tempfile.TemporaryDirectory(prefix='lm-vs-hf-') as tmp:
    write_hf_model(model_cfg, params, tmp, bos_id=1, eos_id=2, pad_id=0)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp, dtype=torch.float32).eval()

  def hf_generate(prompts):
    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
      out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0, eos_token_id=None, num_beams=1)
    return out[:, prompt_len:].tolist()

  rng = np.random.default_rng(0)
  rows = []
  for b in batch_sizes:
    prompts = rng.integers(3, model_cfg.vocab_size, (b, prompt_len)).tolist()
    slot_decoder = SlotDecoder(decoder, slots=b, eos_id=-1, chunk=min(64, prompt_len))
    runs = {'lm_generate': lambda p=prompts: decoder.generate(
                params, p, max_new_tokens=new_tokens, sampling=greedy),
            'lm_engine': lambda p=prompts, s=slot_decoder: _slot_generate(
                s, params, p, new_tokens, steps_per_call),
            'transformers': lambda p=prompts: hf_generate(p)}
    times = {name: [] for name in runs}
    tokens = {}
    for i in range(repeats + 1):
      for name, fn in runs.items():
        t0 = time.perf_counter()
        tokens[name] = fn()
        if i:
          times[name].append(time.perf_counter() - t0)
    for name, got in tokens.items():
      if [len(t) for t in got] != [new_tokens] * b:
        raise AssertionError(f'{name} made {[len(t) for t in got]} tokens, not {new_tokens}')
    if tokens['lm_engine'] != tokens['lm_generate']:
      raise AssertionError('the engine path and Decoder.generate gave different greedy tokens')
    same = sum(x == y for r, h in zip(tokens['lm_generate'], tokens['transformers'], strict=True)
               for x, y in zip(r, h, strict=True))
    row = {'batch': b, 'same_tokens_as_transformers': same / (b * new_tokens)}
    for name, ts in times.items():
      best = min(ts)
      row[name] = {'seconds': best, 'tokens_per_sec': b * new_tokens / best}
    for name in ('lm_generate', 'lm_engine'):
      row[f'{name}_vs_transformers'] = (row[name]['tokens_per_sec']
                                        / row['transformers']['tokens_per_sec'])
    rows.append(row)
  device = jax.devices()[0]
  return {'device': f'{jax.device_count()} x {getattr(device, "device_kind", device.platform)}',
          'jax': jax.__version__, 'torch': torch.__version__,
          'transformers': transformers.__version__, 'torch_threads': torch.get_num_threads(),
          'params': model_cfg.param_count(), 'prompt_len': prompt_len, 'new_tokens': new_tokens,
          'steps_per_call': steps_per_call, 'repeats': repeats, 'rows': rows}
