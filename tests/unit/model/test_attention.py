"""Attention implementations against the dense reference (outputs and gradients, float32,
1e-5): blockwise and the Pallas GPU (flash) and TPU (splash) kernels in interpret mode,
on one device and per device under a mesh; causal and bidirectional, GQA/MQA, packed rows
of several documents, KV-cache decode; and what 'auto' picks."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.default import get_config
from lm import parallel
from lm.errors import ConfigError
from lm.model import ModelConfig, Transformer
from lm.model.attention_blockwise import blockwise_attention
from lm.model.attention_kernels import choose, flash_attention, score_bytes_kept, splash_attention
from lm.model.attention_mask import attention_mask, cache_attention_mask

TOL = dict(atol=1e-5, rtol=1e-5)


def _reference(q, k, v, mask):
  return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(), implementation='xla')


def _inputs(b=2, t=37, n=4, kv=2, h=8, docs=3, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, t, kv, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, kv, h)), jnp.float32)
  # Packed rows: `docs` documents of random lengths per row, ids 1.. (as lm.data packs them).
  seg = np.sort(rng.integers(1, docs + 1, size=(b, t)), axis=1)
  assert all(len(set(row)) > 1 for row in seg)
  w = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)  # a cotangent
  return q, k, v, jnp.asarray(seg, jnp.int32), w


def _assert_same(fn, q, k, v, mask, w):
  def out_and_grads(f):
    return jax.jit(lambda *a: (f(*a), jax.grad(lambda *b: jnp.sum(f(*b) * w),
                                               argnums=(0, 1, 2))(*a)))(q, k, v)
  got, got_g = out_and_grads(fn)
  want, want_g = out_and_grads(lambda *a: _reference(*a, mask))
  np.testing.assert_allclose(got, want, **TOL)
  for name, g, r in zip('qkv', got_g, want_g, strict=True):
    np.testing.assert_allclose(g, r, err_msg=f'd{name}', **TOL)


@pytest.mark.parametrize('causal,kv', [(True, 4), (True, 2), (False, 1), (False, 2)],
                         ids=['causal-mha', 'causal-gqa', 'bidirectional-mqa',
                              'bidirectional-gqa'])
def test_blockwise_equals_dense(causal, kv):
  q, k, v, seg, w = _inputs(kv=kv)
  mask = attention_mask(seg, causal=causal)
  # T=37 is no multiple of either block: the padding must match nothing.
  _assert_same(lambda *a: blockwise_attention(*a, mask, block_q=8, block_kv=16), q, k, v,
               mask, w)


def test_blockwise_kv_cache_decode_equals_dense():
  q, k, v, _, w = _inputs(b=2, t=24, kv=1)
  positions = jnp.asarray([[5, 6, 7], [20, 21, 22]], jnp.int32)  # 3 new tokens per row
  mask = cache_attention_mask(positions, k.shape[1])
  q3, w3 = q[:, :3], w[:, :3]
  _assert_same(lambda *a: blockwise_attention(*a, mask, block_q=2, block_kv=8), q3, k, v,
               mask, w3)


def test_pallas_gpu_flash_kernel_in_interpret_mode_equals_dense():
  q, k, v, seg, w = _inputs(b=1, t=24, n=2, kv=1, h=16, docs=2)  # padded to 32 inside
  mask = attention_mask(seg, causal=True)
  _assert_same(lambda *a: flash_attention(*a, mask, interpret=True), q, k, v, mask, w)


@pytest.mark.parametrize('causal,n,kv', [(True, 4, 2), (False, 2, 1)],
                         ids=['causal-gqa', 'bidirectional-mqa'])
def test_pallas_tpu_splash_kernel_in_interpret_mode_equals_dense(causal, n, kv):
  # T=37 is padded to one 128 block inside; GQA takes the MHA kernel, MQA the MQA kernel.
  q, k, v, seg, w = _inputs(b=2, t=37, n=n, kv=kv, h=16, docs=3)
  mask = attention_mask(seg, causal=causal)
  _assert_same(lambda *a: splash_attention(*a, mask, interpret=True), q, k, v, mask, w)


PALLAS = {'flash': flash_attention, 'splash': splash_attention}


def _kernel_block_shapes(fn, q, k, v) -> list[tuple[int, ...]]:
  """The float32 operand shapes of the shard_map body in the lowered program of fn(q, k, v)
  (what one device's kernel sees), [] when nothing runs under shard_map."""
  text = jax.jit(fn).lower(q, k, v).as_text()
  heads = [line.split('manual_axes=', 1)[1] for line in text.splitlines()
           if 'sdy.manual_computation' in line]
  return [tuple(int(d) for d in m.split('x'))
          for line in heads for m in re.findall(r'tensor<([\dx]+)xf32>', line)]


@pytest.mark.parametrize('kernel', list(PALLAS))
def test_pallas_kernels_run_per_device_under_a_mesh(kernel):
  """data=2 x fsdp=2 x tensor=2 under the default rules: each device's kernel takes its own
  B/4 rows and N/2 query heads with their K/2 KV heads, and equals the dense reference."""
  m = get_config().mesh
  m.data, m.fsdp, m.tensor = 2, 2, 2
  mesh, rules = parallel.build_mesh(m), parallel.rules_for(m)
  b, t, n, kv, h = 4, 24, 4, 2, 16
  q, k, v, seg, w = _inputs(b=b, t=t, n=n, kv=kv, h=h, docs=2)
  mask = attention_mask(seg, causal=True)
  fn = lambda *a: PALLAS[kernel](*a, mask, interpret=True)  # noqa: E731
  with parallel.use_rules(mesh, rules):
    assert _kernel_block_shapes(fn, q, k, v) == [(1, t, 2, h), (1, t, 1, h), (1, t, 1, h)]
    _assert_same(fn, q, k, v, mask, w)


def test_pallas_kernel_keeps_heads_that_do_not_split_alike_and_the_sequence_whole():
  """One KV head on tensor=2: the heads stay whole (a device holds every query head with
  the KV head); sequence=2: each device's kernel takes whole rows, gathered over the
  sequence group. Still equal to the dense reference."""
  m = get_config().mesh
  m.data, m.sequence, m.tensor = 2, 2, 2
  mesh, rules = parallel.build_mesh(m), parallel.rules_for(m)
  b, t, n, h = 2, 16, 2, 16
  q, k, v, seg, w = _inputs(b=b, t=t, n=n, kv=1, h=h, docs=2)
  mask = attention_mask(seg, causal=True)
  fn = lambda *a: flash_attention(*a, mask, interpret=True)  # noqa: E731
  with parallel.use_rules(mesh, rules):
    assert _kernel_block_shapes(fn, q, k, v) == [(1, t, n, h), (1, t, 1, h), (1, t, 1, h)]
    _assert_same(fn, q, k, v, mask, w)


TINY = ModelConfig(vocab_size=61, num_layers=1, width=32, num_heads=4, num_kv_heads=2,
                   mlp_dim=48, max_len=64)


def test_model_with_blockwise_equals_dense_in_training_and_decoding():
  """The whole model: packed-row logits and parameter gradients, then a prefill and one
  decode step through the KV cache."""
  dense = Transformer(dataclasses.replace(TINY, attention='xla'), rngs=nnx.Rngs(0))
  block = Transformer(dataclasses.replace(TINY, attention='blockwise'), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 20)), jnp.int32)
  seg = jnp.asarray(np.repeat([[1, 2, 3, 4]], 5, axis=1), jnp.int32)
  pos = jnp.asarray(np.tile(np.arange(5), 4)[None].repeat(2, 0), jnp.int32)

  @nnx.jit
  def train(model):
    loss = lambda m: jnp.mean(m(tokens, pos, seg) ** 2)  # noqa: E731
    return model(tokens, pos, seg), nnx.grad(loss)(model)

  for a, b in zip(jax.tree.leaves(train(block)), jax.tree.leaves(train(dense)), strict=True):
    np.testing.assert_allclose(a, b, **TOL)

  @nnx.jit
  def decode(model):
    shape = (TINY.num_layers, 2, 16, TINY.num_kv_heads, TINY.head_dim)
    cache = {'k': jnp.zeros(shape), 'v': jnp.zeros(shape)}
    prompt = tokens[:, :5]
    logits, cache = model.decode(prompt, jnp.broadcast_to(jnp.arange(5), (2, 5)), cache)
    step, _ = model.decode(tokens[:, 5:6], jnp.full((2, 1), 5), cache)
    return logits, step

  for a, b in zip(decode(block), decode(dense), strict=True):
    np.testing.assert_allclose(a, b, **TOL)


def test_auto_picks_per_backend_and_length():
  def pick(platform, t, self_attention=True, **kw):
    return choose(dataclasses.replace(TINY, **kw), platform, q_len=t, kv_len=t,
                  self_attention=self_attention)[0]

  assert pick('cpu', 128) == 'xla'
  assert pick('cpu', 4096) == 'blockwise'
  assert pick('gpu', 4096, dtype='bfloat16') == 'cudnn'
  assert pick('gpu', 4096) == 'blockwise'  # float32: cuDNN does not take it
  assert pick('tpu', 4096) == 'splash'
  assert pick('tpu', 128, self_attention=False) == 'xla'  # a KV-cache decode
  assert pick('tpu', 4096, self_attention=False, attention='splash') == 'blockwise'
  assert pick('gpu', 4096, self_attention=False, attention='cudnn', dtype='bfloat16') == (
      'blockwise')  # a KV-cache decode is not a layout the fused kernels take
  assert pick('cpu', 128, attention='blockwise') == 'blockwise'


@pytest.mark.parametrize('attention,where', [('cudnn', 'GPU'), ('flash', 'GPU'),
                                             ('splash', 'TPU')])
def test_a_kernel_off_its_hardware_is_a_config_error_naming_the_key(attention, where):
  cfg = dataclasses.replace(TINY, attention=attention, dtype='bfloat16')
  with pytest.raises(ConfigError, match=f"model.attention='{attention}' runs on {where}s only"):
    choose(cfg, 'cpu', q_len=16, kv_len=16)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match='model.attention'):  # while tracing, before compiling
    jax.jit(lambda t: model(t)).lower(jnp.zeros((1, 16), jnp.int32))


def test_symbolic_lengths_take_the_path_that_traces_for_any_length():
  """jax.export's symbolic prompt length (lm.infer.export): no size comparison is made."""
  (p,) = jax.export.symbolic_shape('p')
  assert choose(TINY, 'cpu', q_len=p, kv_len=256, self_attention=False)[0] == 'xla'
  assert choose(dataclasses.replace(TINY, attention='blockwise'), 'cpu', q_len=p,
                kv_len=256)[0] == 'blockwise'


@pytest.mark.parametrize('overrides,match', [
    (dict(attention='cudnn'), "model.attention='cudnn' needs model.dtype='bfloat16'"),
    (dict(attention='cudnn', dtype='bfloat16', width=48, num_heads=4, head_dim=12),
     'multiple of 8'),
    (dict(attention='flash', width=32, num_heads=4), "model.attention='flash' needs a head"),
], ids=['cudnn-float32', 'cudnn-head-dim', 'flash-head-dim'])
def test_a_kernel_that_cannot_take_the_model_is_a_config_error_on_gpu(overrides, match):
  with pytest.raises(ConfigError, match=match):
    choose(dataclasses.replace(TINY, **overrides), 'gpu', q_len=16, kv_len=16)


def test_plan_counts_no_score_matrix_for_the_fused_kernels():
  """lm.plan's attention bytes: the dense path grows as T^2, the kernels that keep only a
  log-sum-exp (and splash its segment ids) as T."""
  def kept(impl, t):
    return score_bytes_kept(impl, rows=2, heads=4, q_len=t, kv_len=t)

  assert kept('xla', 4096) == 64 * kept('xla', 512)
  for impl in ('flash', 'splash'):
    assert kept(impl, 4096) == 8 * kept(impl, 512)
  assert kept('splash', 4096) < kept('xla', 4096) / 100


def test_rope_from_the_table_equals_rope_computed_in_the_program():
  """RoPE's row-local path (sin/cos looked up in a NumPy table of the row's T positions,
  what training and evaluation run) against the angles computed in the program (what
  decoding runs): packed rows whose positions restart per document, value and gradient."""
  from lm.model.attention import rope
  rng = np.random.default_rng(0)
  x_BTNH = jnp.asarray(rng.normal(size=(2, 24, 3, 16)), jnp.float32)
  positions_BT = jnp.asarray(np.concatenate([np.arange(24)[None], np.r_[np.arange(10),
                                             np.arange(14)][None]]), jnp.int32)
  w_BTNH = jnp.asarray(rng.normal(size=x_BTNH.shape), jnp.float32)

  def value_and_grad(row_local):
    f = lambda x: rope(x, positions_BT, 500.0, row_local=row_local)  # noqa: E731
    return jax.jit(lambda x: (f(x), jax.grad(lambda y: jnp.sum(f(y) * w_BTNH))(x)))(x_BTNH)

  (table, table_grad), (computed, computed_grad) = value_and_grad(True), value_and_grad(False)
  assert not np.allclose(computed, x_BTNH, atol=1e-2)  # the rotation does something
  np.testing.assert_allclose(table, computed, **TOL)
  np.testing.assert_allclose(table_grad, computed_grad, **TOL)
  # A position outside the row's 0..T-1 reads NaN from the table, not another angle.
  out = rope(x_BTNH, positions_BT.at[0, 3].set(24), 500.0, row_local=True)
  assert np.isnan(out[0, 3]).all() and np.isfinite(np.delete(np.asarray(out), 3, 1)).all()
