"""int8 weight-only quantization: the rounding bound, int8 arrays on the device, the
perplexity of a trained model, and `python -m lm.quantize`'s errors."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UserError
from lm.eval.quantize import compare_perplexity
from lm.infer import init_cache
from lm.model import ModelConfig, ModelDef
from lm.model.quantize import quantize, quantize_array, weight_bytes

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
LLAMA = ModelConfig(vocab_size=97, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                    mlp_dim=96, max_len=48)
GPT2 = dataclasses.replace(LLAMA, num_kv_heads=4, norm='layernorm', mlp='gelu',
                           position='learned', use_bias=True, tie_embeddings=True)


def test_quantize_array_rounds_each_output_channel_to_within_half_a_step():
  w = jax.random.normal(jax.random.key(0), (3, 16, 5, 2)) * jnp.arange(1, 11).reshape(5, 2)
  w = w.at[:, :, 0, 0].set(0.0)  # an all-zero channel
  q, scale = jax.jit(quantize_array, static_argnums=1)(w, (1,))
  assert q.dtype == jnp.int8 and q.shape == w.shape and scale.shape == (3, 5, 2)
  w, q, scale = np.asarray(w), np.asarray(q), np.asarray(scale)
  np.testing.assert_allclose(scale, np.max(np.abs(w), axis=1) / 127 + (w[:, 0] == 0),
                             rtol=1e-6)
  err = np.abs(q * scale[:, None] - w)
  assert np.all(err <= scale[:, None] / 2 + 1e-6)
  assert np.max(np.abs(q)) == 127 and np.all(q[:, :, 0, 0] == 0)


@pytest.mark.parametrize('cfg', [LLAMA, GPT2], ids=['llama', 'gpt2'])
def test_int8_model_keeps_int8_weights_on_device_and_tracks_float_logits(cfg):
  md = ModelDef.create(cfg)
  params = md.init_params(jax.random.key(1))
  qdef, qparams = quantize(md, params)
  assert qdef.cfg.weight_quant == 'int8'
  int8 = [x for x in jax.tree.leaves(qparams) if x.dtype == jnp.int8]
  # qkv, out, up, down kernels + embedding (+ the output matrix when untied)
  assert len(int8) == 4 + 1 + (0 if cfg.tie_embeddings else 1)
  assert weight_bytes(qparams) < 0.32 * weight_bytes(params)

  tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 24))
  want = np.asarray(jax.jit(lambda p, t: md.merge(p)(t))(params, tokens))
  got = np.asarray(jax.jit(lambda p, t: qdef.merge(p)(t))(qparams, tokens))
  assert np.std(got - want) < 0.03 * np.std(want)  # ~1% measured
  assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) > 0.9
  if cfg is GPT2:
    return

  # The jit'd decode step is handed the int8 arrays, not dequantized float copies.
  def step(model_def):
    def fn(p, tokens_BT, cache):
      return model_def.merge(p).decode(tokens_BT, jnp.zeros_like(tokens_BT), cache)
    return jax.jit(fn)
  args = (tokens[:, :1], init_cache(cfg, 2, 8))
  q_in = step(qdef).lower(qparams, *args).compile().memory_analysis()
  f_in = step(md).lower(params, *args).compile().memory_analysis()
  if q_in is not None and f_in is not None:  # the arguments shrink by exactly the weights'
    assert (f_in.argument_size_in_bytes - q_in.argument_size_in_bytes ==
            weight_bytes(params) - weight_bytes(qparams))


def test_quantize_none_and_already_quantized_are_identity():
  md = ModelDef.create(LLAMA)
  params = md.init_params(jax.random.key(0))
  same_def, same_params = quantize(md, params, 'none')
  assert same_def is md and same_params is params
  qdef, qparams = quantize(md, params)
  again_def, again_params = quantize(qdef, qparams)
  assert again_def is qdef and again_params is qparams
  with pytest.raises(UserError, match="quantize='int4' is not one of none, int8"):
    quantize(md, params, 'int4')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A small byte-level model trained for 40 steps (a few seconds on a CPU)."""
  from configs.default import get_config
  from lm.train import train

  tmp = tmp_path_factory.mktemp('quantize')
  corpus = tmp / 'corpus'
  corpus.mkdir()
  (corpus / 'a.txt').write_text('the quick brown fox jumps over the lazy dog. ' * 50 +
                                'pack my box with five dozen liquor jugs. ' * 50)
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(tmp / 'cache')
  c.data.split, c.data.val_fraction, c.data.seq_len = 'tail', 0.2, 32
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 64, 128
  c.model.num_heads, c.model.num_kv_heads = 4, 2
  c.optimizer.warmup_steps = 5
  c.train.steps, c.train.batch_size = 40, 8
  c.train.steps_per_dispatch = c.train.log_every = 20
  c.train.eval_every = c.checkpoint.every = 40
  c.train.eval_batches, c.train.sample_tokens = 2, 0
  workdir = tmp / 'run'
  train(c, str(workdir))
  return workdir


def test_int8_perplexity_within_2_percent_of_float_on_a_trained_model(trained):
  r = compare_perplexity(str(trained))
  f, q = r['float'], r['int8']
  assert f['eval/perplexity'] < 20  # it learned something (uniform over 259 bytes is 259)
  assert abs(q['eval/perplexity'] / f['eval/perplexity'] - 1) < 0.02
  assert q['eval/perplexity'] != f['eval/perplexity']  # the weights really changed
  ratio = q['weight_bytes'] / f['weight_bytes']
  assert 0.25 < ratio < 0.3, ratio  # int8 matmul weights; float norms and scales remain


def test_cli_names_a_bad_workdir(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run([sys.executable, '-m', 'lm.quantize', f'--workdir={tmp_path}'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 1 and str(tmp_path) in run.stderr and 'config.json' in run.stderr
