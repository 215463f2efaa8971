"""lm.infer and `python -m lm.generate`: the KV cache changes no logit, sampling keeps to
its filters, and the CLI continues a prompt from a trained workdir."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import InputError, UserError
from lm.infer import Decoder, SamplingConfig, filter_logits, init_cache, sample
from lm.model import ModelConfig, ModelDef
from lm.train.sample import sample_tokens

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
LLAMA = ModelConfig(vocab_size=97, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                    mlp_dim=96, max_len=48)
GPT2 = dataclasses.replace(LLAMA, num_kv_heads=4, norm='layernorm', mlp='gelu',
                           position='learned', use_bias=True, tie_embeddings=True)
CONFIGS = pytest.mark.parametrize('cfg', [LLAMA, GPT2], ids=['llama', 'gpt2'])


@pytest.fixture(scope='module')
def models():
  out = {}
  for cfg in (LLAMA, GPT2):
    md = ModelDef.create(cfg)
    # Larger-than-init weights so that the logits (and greedy choices) are far from uniform.
    params = jax.tree.map(lambda x: x * 3.0, md.init_params(jax.random.key(1)))
    out[cfg.position] = md, params
  return out


@CONFIGS
def test_cached_decode_logits_equal_the_full_forward_at_every_position(cfg, models):
  """A batch of prompts of lengths 5, 9 and 2, right-padded: prefill, then 6 tokens one at a
  time; every real position's logits equal those of the row run alone through __call__."""
  md, params = models[cfg.position]
  rng = np.random.default_rng(0)
  lengths, new, cache_len = [5, 9, 2], 6, 24
  rows = [rng.integers(0, cfg.vocab_size, n + new) for n in lengths]
  prompts = np.zeros((3, 9), np.int32)
  for i, n in enumerate(lengths):
    prompts[i, :n] = rows[i][:n]

  @jax.jit
  def prefill(params, tokens_BT, cache):
    positions = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    return md.merge(params).decode(tokens_BT, positions, cache)

  @jax.jit
  def step(params, token_B, position_B, cache):
    return md.merge(params).decode(token_B[:, None], position_B[:, None], cache)

  full = [np.asarray(md.merge(params)(jnp.asarray(r[None])))[0] for r in rows]
  logits, cache = prefill(params, prompts, init_cache(cfg, 3, cache_len))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(logits[i, :n], full[i][:n], atol=1e-5, rtol=0)
  for j in range(new):
    token_B = np.array([r[n + j] for r, n in zip(rows, lengths, strict=True)], np.int32)
    logits, cache = step(params, token_B, np.array(lengths, np.int32) + j, cache)
    for i, n in enumerate(lengths):
      np.testing.assert_allclose(logits[i, 0], full[i][n + j], atol=1e-5, rtol=0)


@CONFIGS
def test_greedy_equals_full_recomputation(cfg, models):
  md, params = models[cfg.position]
  decoder = Decoder(md)
  prompts = [[3, 14, 15, 92, 65], [35, 89], [7, 9, 3, 2, 38, 46, 26, 43, 38]]
  greedy = SamplingConfig(temperature=0.0)
  got = decoder.generate(params, prompts, max_new_tokens=12, sampling=greedy)
  for prompt, tokens in zip(prompts, got, strict=True):
    want = sample_tokens(md, params, prompt, num_tokens=12, temperature=0.0, seed=0,
                         window=cfg.max_len)
    assert tokens == want
  assert decoder.generate(params, prompts, max_new_tokens=12, sampling=greedy, seed=5) == got
  assert len({tuple(t) for t in got}) > 1  # not a degenerate model


def test_seeded_sampling_is_reproducible_and_seeds_differ(models):
  md, params = models['rope']
  decoder = Decoder(md)
  prompts, hot = [[1, 2, 3], [4, 5]], SamplingConfig(temperature=1.5)
  a = decoder.generate(params, prompts, max_new_tokens=16, sampling=hot, seed=1)
  assert decoder.generate(params, prompts, max_new_tokens=16, sampling=hot, seed=1) == a
  assert decoder.generate(params, prompts, max_new_tokens=16, sampling=hot, seed=2) != a


def test_stop_tokens_end_a_row_and_are_trimmed(models):
  md, params = models['rope']
  decoder = Decoder(md)
  greedy = SamplingConfig(temperature=0.0)
  prompts = [[1, 2, 3], [4, 5]]
  full = decoder.generate(params, prompts, max_new_tokens=10, sampling=greedy)
  stop = full[0][3:5]

  def until_stop(row):  # the row up to and including the first occurrence of `stop`
    ends = [j + 2 for j in range(len(row) - 1) if row[j:j + 2] == stop]
    return row[:ends[0]] if ends else row

  steps = np.stack(list(decoder.stream(params, prompts, max_new_tokens=10, sampling=greedy,
                                       stop_tokens=[stop])))
  want = [until_stop(row) for row in full]
  assert len(want[0]) <= 5 and len(steps) == max(map(len, want))
  for i, row in enumerate(want):
    assert steps[:len(row), i].tolist() == row and (steps[len(row):, i] == -1).all()
  got = decoder.generate(params, prompts, max_new_tokens=10, sampling=greedy, stop_tokens=[stop])
  assert got == [row[:-2] if row[-2:] == stop else row for row in want]


def test_stop_text_cuts_the_continuation(models):
  md, params = models['rope']

  class Letters:  # token i <-> chr(ord('!') + i)
    def encode(self, text):
      return [ord(c) - 33 for c in text]

    def decode(self, ids):
      return ''.join(chr(33 + i) for i in ids)

  decoder, greedy = Decoder(md), SamplingConfig(temperature=0.0)
  text = decoder.generate_text(params, Letters(), ['abc'], max_new_tokens=10, sampling=greedy)[0]
  stop = text[4:6]
  cut = decoder.generate_text(params, Letters(), ['abc'], max_new_tokens=10, sampling=greedy,
                              stop=[stop])[0]
  assert cut == text[:text.find(stop)]


def test_top_k_and_top_p_keep_to_their_sets():
  logits_V = jnp.log(jnp.array([0.05, 0.4, 0.02, 0.3, 0.15, 0.08]))
  logits_BV = jnp.broadcast_to(logits_V, (4096, 6))
  keys = jax.random.split(jax.random.key(0), 3)

  def draws(key, top_k, top_p):
    return set(np.asarray(sample(logits_BV, key, temperature=jnp.float32(1.0),
                                 top_k=jnp.int32(top_k), top_p=jnp.float32(top_p))).tolist())

  assert draws(keys[0], 2, 1.0) == {1, 3}
  assert draws(keys[1], 0, 0.8) == {1, 3, 4}  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
  assert draws(keys[2], 0, 0.69) == {1, 3}
  assert draws(keys[2], 3, 0.1) == {1}  # the top token is always kept
  assert draws(keys[0], 0, 1.0) == set(range(6))
  # top-p applies to the top-k renormalised: 0.4, 0.3, 0.15 of 0.93 is 0.91 >= 0.9.
  kept = np.isfinite(np.asarray(filter_logits(logits_V[None], jnp.int32(4), jnp.float32(0.9))))
  assert kept.tolist() == [[False, True, False, True, True, False]]
  greedy = sample(logits_BV, keys[0], temperature=jnp.float32(0.0), top_k=jnp.int32(0),
                  top_p=jnp.float32(1.0))
  assert set(np.asarray(greedy).tolist()) == {1}


def test_length_guard_and_bad_requests(models):
  md, params = models['learned']
  with pytest.raises(InputError, match=r'prompt length 40 \+ max_new_tokens 9 = 49 exceeds '
                     r'the model max_len 48'):
    Decoder(md).generate(params, [[1] * 40], max_new_tokens=9)
  with pytest.raises(InputError, match='configured cache length 16'):
    Decoder(models['rope'][0], cache_len=16).generate(models['rope'][1], [[1] * 10],
                                                      max_new_tokens=7)
  with pytest.raises(InputError, match='cache_len=64 exceeds the model max_len=48'):
    Decoder(md, cache_len=64)
  with pytest.raises(InputError, match='prompt 1 is empty'):
    Decoder(md).generate(params, [[1], []], max_new_tokens=2)
  with pytest.raises(InputError, match='top_p'):
    SamplingConfig(top_p=0.0)
  with pytest.raises(InputError, match='temperature'):
    SamplingConfig(temperature=-1.0)
  assert issubclass(InputError, UserError) and not issubclass(InputError, ValueError)


# ---- the CLI ------------------------------------------------------------------------------


def _generate(env, *args):
  return subprocess.run([sys.executable, '-m', 'lm.generate', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one device in the subprocess
  env['JAX_PLATFORMS'] = 'cpu'
  env['LM_CACHE'] = str(tmp_path_factory.mktemp('lm_cache'))
  return env


def test_cli_continues_a_prompt_and_rejects_a_workdir_without_checkpoints(env, tmp_path):
  from configs.default import get_config
  from lm.train import train

  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  (corpus / 'a.txt').write_text('the quick brown fox jumps over the lazy dog. ' * 60)
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(tmp_path / 'cache')
  c.data.split, c.data.val_fraction, c.data.seq_len = 'tail', 0.2, 32
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.optimizer.warmup_steps = 2
  c.train.steps, c.train.batch_size = 10, 8
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.eval_every = c.checkpoint.every = 10
  c.train.eval_batches, c.train.sample_tokens = 1, 0
  workdir = tmp_path / 'run'
  train(c, str(workdir))

  run = _generate(env, f'--workdir={workdir}', '--prompt=the quick', '--max_new_tokens=12',
                  '--temperature=0')
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.startswith('the quick') and len(run.stdout) > len('the quick\n'), run.stdout

  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  (empty / 'config.json').write_text((workdir / 'config.json').read_text())
  run = _generate(env, f'--workdir={empty}', '--prompt=x')
  assert run.returncode != 0
  assert 'no checkpoints' in run.stderr and str(empty) in run.stderr
