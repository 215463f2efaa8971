"""A self-contained decoding artifact: prefill and one-token step serialized with `jax.export`.

    export_run(load_run(workdir), out_dir, quantize_mode='int8')   # or, for any model:
    export_artifact(model_def, params, tokenizer, out_dir, cache_len=256)

writes into `out_dir`:

    prefill.jax      (weights, tokens [B, P], lengths [B], key, temperature, top_k, top_p)
                     -> (token [B], logits [B, V], k cache, v cache)
    step.jax         (weights, token [B], position [B], k cache, v cache, key, temperature,
                     top_k, top_p) -> (token [B], logits [B, V], k cache, v cache)
    weights.npz      the parameters (int8 + scales when quantized), named by their path
    tokenizer/       the run's tokenizer files (tokenizer.json + spm.model / chars.json)
    artifact.json    shapes, the weights' order, tokenizer ids, how it was made
    config.json      the training run's config, when given
    run.py           a runner that needs only jax, numpy (and sentencepiece for SP models)

The weights are inputs of the exported functions, not constants baked into them: the
serialized modules stay small, int8 weights stay int8 on disk and on the device, and a
checkpoint of the same shapes can replace weights.npz without exporting again.
B is fixed by `batch_size` or symbolic (any batch) when it is 0; P is always symbolic
(any prompt length up to the cache length). Sampling runs inside the functions with the
Decoder's own `sample`, so the runner gives the Decoder's tokens for the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from lm import config as config_lib
from lm.errors import InputError
from lm.infer.decode import PREFILL_BUCKET, init_cache
from lm.infer.sampling import sample
from lm.model import ModelDef
from lm.model.quantize import quantize
from lm.run import Run

RUNNER_SOURCE = pathlib.Path(__file__).with_name('artifact_runner.py')
FORMAT_VERSION = 1
FILES = {'prefill': 'prefill.jax', 'step': 'step.jax', 'weights': 'weights.npz',
         'tokenizer': 'tokenizer', 'manifest': 'artifact.json', 'config': 'config.json',
         'runner': 'run.py'}


def _names(params: dict) -> list[str]:
  """Dotted path of every leaf, in jax.tree order (the order the functions take them)."""
  return ['.'.join(str(getattr(k, 'key', k)) for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def decode_functions(model_def: ModelDef, treedef, *, cache_len: int):
  """(prefill, step) over a flat list of weights, as the artifact exports them."""
  cfg = model_def.cfg

  def knobs(temperature, top_k, top_p):
    return {'temperature': temperature, 'top_k': top_k, 'top_p': top_p}

  def prefill(weights, tokens_BP, lengths_B, key_data, temperature, top_k, top_p):
    b, p = tokens_BP.shape
    model = model_def.merge(jax.tree.unflatten(treedef, weights))
    positions_BP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    logits_BPV, cache = model.decode(tokens_BP, positions_BP, init_cache(cfg, b, cache_len))
    last_BV = logits_BPV[jnp.arange(b), lengths_B - 1]
    token_B = sample(last_BV, jax.random.wrap_key_data(key_data),
                     **knobs(temperature, top_k, top_p))
    return token_B, last_BV, cache['k'], cache['v']

  def step(weights, tokens_B, positions_B, k_LBSKH, v_LBSKH, key_data, temperature, top_k,
           top_p):
    model = model_def.merge(jax.tree.unflatten(treedef, weights))
    logits_B1V, cache = model.decode(tokens_B[:, None], positions_B[:, None],
                                     {'k': k_LBSKH, 'v': v_LBSKH})
    token_B = sample(logits_B1V[:, 0], jax.random.wrap_key_data(key_data),
                     **knobs(temperature, top_k, top_p))
    return token_B, logits_B1V[:, 0], cache['k'], cache['v']

  return prefill, step


def export_artifact(model_def: ModelDef, params: dict, tokenizer, out_dir: str | pathlib.Path, *,
                    cache_len: int, batch_size: int = 0, platforms: tuple[str, ...] = (),
                    config_json: str | None = None, info: dict[str, Any] | None = None) -> dict:
  """Writes the artifact (see the module docstring) and returns its manifest.

  `batch_size` 0 exports for any batch; `platforms` (e.g. ('cpu', 'cuda')) default to the
  current backend. `info` is recorded in artifact.json (source workdir, step, ...).
  """
  cfg = model_def.cfg
  if cache_len < 1:
    raise InputError(f'max_len={cache_len} must be >= 1')
  if cfg.position == 'learned' and cache_len > cfg.max_len:
    raise InputError(f'max_len={cache_len} exceeds the model max_len={cfg.max_len}, the size '
                     'of its learned position table; export with a smaller max_len')
  if batch_size < 0:
    raise InputError(f'batch_size={batch_size} must be >= 0 (0 = any batch size)')
  out = pathlib.Path(out_dir)
  if out.exists() and any(out.iterdir()):
    raise InputError(f'{out} exists and is not empty; give a new --out directory')
  out.mkdir(parents=True, exist_ok=True)

  leaves, treedef = jax.tree.flatten(params)
  names = _names(params)
  prefill, step = decode_functions(model_def, treedef, cache_len=cache_len)
  if batch_size:
    b = batch_size
    (p,) = export.symbolic_shape('p')
  else:
    b, p = export.symbolic_shape('b, p')
  key_data = jax.random.key_data(jax.random.key(0))
  sds = jax.ShapeDtypeStruct
  weights = [sds(x.shape, x.dtype) for x in leaves]
  cache = sds((cfg.num_layers, b, cache_len, cfg.num_kv_heads, cfg.head_dim), cfg.jnp_dtype)
  knobs = (sds((), jnp.float32), sds((), jnp.int32), sds((), jnp.float32))
  key = sds(key_data.shape, key_data.dtype)
  kwargs = {'platforms': tuple(platforms)} if platforms else {}
  prefill_exp = export.export(jax.jit(prefill), **kwargs)(
      weights, sds((b, p), jnp.int32), sds((b,), jnp.int32), key, *knobs)
  step_exp = export.export(jax.jit(step), **kwargs)(
      weights, sds((b,), jnp.int32), sds((b,), jnp.int32), cache, cache, key, *knobs)
  (out / FILES['prefill']).write_bytes(prefill_exp.serialize())
  (out / FILES['step']).write_bytes(step_exp.serialize())
  np.savez(out / FILES['weights'], **{n: np.asarray(x) for n, x in zip(names, leaves,
                                                                        strict=True)})
  tok_dir = out / FILES['tokenizer']
  tok_dir.mkdir()
  tokenizer.save(tok_dir)
  if config_json is not None:
    (out / FILES['config']).write_text(config_json)
  shutil.copyfile(RUNNER_SOURCE, out / FILES['runner'])

  manifest = {
      'format_version': FORMAT_VERSION,
      'files': FILES,
      'model': dataclasses.asdict(cfg),
      'quantize': cfg.weight_quant,
      'batch_size': batch_size,
      'cache_len': cache_len,
      'prefill_bucket': PREFILL_BUCKET,
      'vocab_size': cfg.vocab_size,
      'tokenizer': {'kind': tokenizer.kind, 'vocab_size': tokenizer.vocab_size,
                    'pad_id': tokenizer.pad_id, 'bos_id': tokenizer.bos_id,
                    'eos_id': tokenizer.eos_id},
      'prng_impl': str(jax.random.key_impl(jax.random.key(0))),
      'platforms': list(prefill_exp.platforms),
      'weights': [{'name': n, 'shape': list(x.shape), 'dtype': str(x.dtype)}
                  for n, x in zip(names, leaves, strict=True)],
      'weight_bytes': int(sum(x.nbytes for x in leaves)),
      'jax_version': jax.__version__,
      **(info or {}),
  }
  (out / FILES['manifest']).write_text(json.dumps(manifest, indent=1) + '\n')
  return manifest


def export_run(run: Run, out_dir: str | pathlib.Path, *, quantize_mode: str = 'none',
               cache_len: int = 0, batch_size: int = 0,
               platforms: tuple[str, ...] = ()) -> dict:
  """Exports a loaded run (lm.run.load_run): its weights (float, or quantize_mode='int8'),
  its tokenizer and config, for `cache_len` tokens (0 = the model's max_len)."""
  model_def, params = quantize(run.model_def, run.params, quantize_mode)
  return export_artifact(model_def, params, run.tokenizer, out_dir,
                         cache_len=cache_len or model_def.cfg.max_len, batch_size=batch_size,
                         platforms=platforms, config_json=config_lib.to_json(run.config),
                         info={'workdir': run.workdir, 'step': run.step})
