"""The Transformer: shapes, causality, packed-document isolation, configurations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.model import ModelConfig, ModelDef, Transformer

LLAMA = ModelConfig(vocab_size=97, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                    mlp_dim=96, max_len=32)
GPT2 = dataclasses.replace(LLAMA, num_kv_heads=4, norm='layernorm', mlp='gelu',
                           position='learned', use_bias=True, tie_embeddings=True)


def _model(cfg, seed=0):
  return Transformer(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize('cfg', [LLAMA, GPT2], ids=['llama', 'gpt2'])
def test_shapes_and_param_count(cfg):
  model = _model(cfg)
  tokens = jnp.zeros((3, 16), jnp.int32)
  assert model(tokens).shape == (3, 16, cfg.vocab_size)
  params = nnx.state(model, nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.param_count()


@pytest.mark.parametrize('cfg', [LLAMA, GPT2], ids=['llama', 'gpt2'])
def test_causal(cfg):
  model = _model(cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 16))
  changed = tokens.copy()
  changed[:, 10:] = rng.integers(0, cfg.vocab_size, (2, 6))
  a, b = model(jnp.asarray(tokens)), model(jnp.asarray(changed))
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
  assert not np.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize('cfg', [LLAMA, GPT2], ids=['llama', 'gpt2'])
def test_packed_documents_do_not_see_each_other(cfg):
  """Two documents packed in one row give the same logits as each alone."""
  model = _model(cfg)
  rng = np.random.default_rng(1)
  doc_a, doc_b = rng.integers(0, cfg.vocab_size, 7), rng.integers(0, cfg.vocab_size, 9)
  packed = jnp.asarray(np.concatenate([doc_a, doc_b])[None])
  segments = jnp.asarray([[1] * 7 + [2] * 9])
  positions = jnp.asarray([list(range(7)) + list(range(9))])
  packed_logits = model(packed, positions, segments)
  alone_b = model(jnp.asarray(doc_b[None]))
  alone_a = model(jnp.asarray(doc_a[None]))
  np.testing.assert_allclose(packed_logits[0, 7:], alone_b[0], atol=1e-5)
  np.testing.assert_allclose(packed_logits[0, :7], alone_a[0], atol=1e-5)
  # Changing document A changes none of document B's logits.
  other = packed.at[0, :7].set((packed[0, :7] + 1) % cfg.vocab_size)
  np.testing.assert_allclose(model(other, positions, segments)[0, 7:], packed_logits[0, 7:],
                             atol=1e-6)


def test_gqa_and_mqa_run_and_differ_from_mha():
  for kv in (1, 2, 4):
    cfg = dataclasses.replace(LLAMA, num_kv_heads=kv)
    model = _model(cfg)
    assert model.blocks.attn.qkv.kernel.shape == (2, 64, kv, 4 // kv + 2, 16)
    assert model(jnp.ones((1, 8), jnp.int32)).shape == (1, 8, 97)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_and_unroll_give_the_same_gradients(remat):
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 16)))

  def grads(cfg):
    md = ModelDef.create(cfg)
    params = md.init_params(jax.random.key(0))
    def loss(p):
      return jnp.mean(md.merge(p)(tokens) ** 2)

    return jax.grad(loss)(params)

  base = grads(LLAMA)
  for cfg in (dataclasses.replace(LLAMA, remat=remat),
              dataclasses.replace(LLAMA, unroll_layers=True)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 base, grads(cfg))


def test_layers_are_stacked_in_one_layout():
  model = _model(LLAMA)
  axes = model.logical_axes()
  assert axes['blocks']['mlp']['up']['kernel'] == ('layers', 'embed', 'mlp', None)
  assert model.blocks.mlp.up.kernel.shape == (2, 64, 96, 2)
  # Layers are initialised independently.
  w = model.blocks.mlp.up.kernel[...]
  assert not np.allclose(w[0], w[1])


def test_dropout_is_active_only_with_a_key():
  cfg = dataclasses.replace(LLAMA, dropout=0.5)
  model = _model(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  np.testing.assert_array_equal(model(tokens), model(tokens))
  a = model(tokens, dropout_key=jax.random.key(0))
  b = model(tokens, dropout_key=jax.random.key(1))
  assert not np.allclose(a, b)


def test_grouped_query_attention_matches_a_per_head_reference():
  """Query head n attends with KV head n // (heads / kv_heads), as in LLaMA/HF."""
  from lm.model.attention import Attention, attention_mask
  cfg = dataclasses.replace(LLAMA, num_heads=4, num_kv_heads=2, position='learned')
  attn = Attention(cfg, rngs=nnx.Rngs(3))
  x = np.asarray(jax.random.normal(jax.random.key(4), (1, 6, 64)))
  w = np.asarray(attn.qkv.kernel[...])  # [D, K, G + 2, H]
  wo = np.asarray(attn.out.kernel[...])  # [N, H, D]
  g = 2
  out = np.zeros((6, 64))
  for n in range(4):
    kv = n // g
    q, k, v = x[0] @ w[:, kv, n % g], x[0] @ w[:, kv, g], x[0] @ w[:, kv, g + 1]
    s = q @ k.T / np.sqrt(16) + np.triu(np.full((6, 6), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    out += (p / p.sum(-1, keepdims=True)) @ v @ wo[n]
  got = attn(jnp.asarray(x), jnp.arange(6)[None], attention_mask(jnp.ones((1, 6), jnp.int32)))
  np.testing.assert_allclose(got[0], out, atol=1e-5)


@pytest.mark.parametrize('param_dtype', ['float32', 'bfloat16'])
def test_bfloat16_compute_tracks_float32(param_dtype):
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (2, 16)))
  f32 = ModelDef.create(LLAMA)
  params = f32.init_params(jax.random.key(0))
  bf16 = ModelDef.create(dataclasses.replace(LLAMA, dtype='bfloat16', param_dtype=param_dtype))
  cast = jax.tree.map(lambda p: p.astype(param_dtype), params)
  ref, got = f32.merge(params)(tokens), bf16.merge(cast)(tokens)
  assert got.dtype == jnp.float32  # logits are returned in float32 for the loss
  assert jax.tree.leaves(bf16.init_params(jax.random.key(0)))[0].dtype == jnp.dtype(param_dtype)
  np.testing.assert_allclose(got, ref, atol=0.05)
  assert not np.array_equal(got, ref)  # it really ran in bfloat16
