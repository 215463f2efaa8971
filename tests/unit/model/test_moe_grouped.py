"""lm/model/moe_grouped.py: the grouped-matmul MoE equals the one-hot dispatch (outputs,
losses, gradients; dropless and with capacity), drops exactly what the dispatch drops, and
its expert-parallel all-to-all exchange equals one device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.default import get_config
from lm import parallel
from lm.model import ModelConfig
from lm.model.moe import MoE, capacity, choose_experts, kept_assignments, route

SEQ_LEN = 16


def _cfg(mlp='swiglu', **moe) -> ModelConfig:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = 2, 32, 64, 4, 2
  c.mlp, c.use_bias = mlp, True
  c.moe.update({'num_experts': 4, 'top_k': 2, 'capacity_factor': 0.0, **moe})
  return ModelConfig.from_config(c, vocab_size=64, seq_len=SEQ_LEN)


def _moe(cfg, kernel=None) -> MoE:
  moe = MoE(cfg, rngs=nnx.Rngs(0))
  moe.kernel = kernel
  moe.up_bias[...] = moe.up_bias[...] + 0.1  # non-zero biases take part too
  moe.down_bias[...] = moe.down_bias[...] - 0.05
  return moe


def _loss_and_grads(moe: MoE, impl: str, x_BTD, domains_BT=None):
  def loss(moe, x_BTD):
    moe.moe = dataclasses.replace(moe.moe, impl=impl)
    y_BTD, aux = moe(x_BTD, domains_BT)
    return jnp.sum(jnp.sin(y_BTD)) + aux['load_balance'] + aux['z_loss'], (y_BTD, aux)
  (value, (y_BTD, aux)), (g_moe, g_x) = jax.jit(
      nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))(moe, x_BTD)
  return value, y_BTD, aux, nnx.state(g_moe), g_x


def _assert_same(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                          strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('kernel,mlp,routing,capacity_factor', [
    ('tiled', 'swiglu', 'learned', 0.0), ('tiled', 'gelu', 'learned', 0.0),
    ('tiled', 'swiglu', 'learned', 1.0), ('tiled', 'swiglu', 'domain', 0.0),
    ('tiled', 'gelu', 'domain+learned', 0.5), ('ragged_dot', 'swiglu', 'learned', 1.0)])
def test_grouped_equals_dispatch(kernel, mlp, routing, capacity_factor):
  domains = {} if routing == 'learned' else {'routing': routing, 'num_domains': 2}
  cfg = _cfg(mlp, capacity_factor=capacity_factor, **domains)
  x_BTD = jax.random.normal(jax.random.key(1), (3, SEQ_LEN, cfg.width))
  domains_BT = jax.random.randint(jax.random.key(2), (3, SEQ_LEN), 0, 2) if domains else None
  ref = _loss_and_grads(_moe(cfg, kernel), 'dispatch', x_BTD, domains_BT)
  got = _loss_and_grads(_moe(cfg, kernel), 'grouped', x_BTD, domains_BT)
  _assert_same(ref, got)  # loss, output, aux statistics, parameter and input gradients
  if capacity_factor:
    assert float(ref[2]['dropped_fraction']) > 0  # the comparison does cover drops


def test_capacity_drops_exactly_what_the_dispatch_drops():
  moe = dataclasses.replace(_cfg(capacity_factor=0.75).moe, num_experts=4)
  b, t = 4, 32
  logits_BTE = jax.random.normal(jax.random.key(3), (b, t, 4)) * 3
  experts_BTK, _, _ = choose_experts(moe, logits_BTE, None, (b, t))
  kept_BTK = np.asarray(kept_assignments(moe, experts_BTK))
  r = route(moe, logits_BTE, None, (b, t))
  # The dispatch's kept assignments: token (b, t)'s k-th expert has a slot.
  dispatch_BTE = np.asarray(r.dispatch_BTEC).sum(-1)
  kept_ref_BTK = np.take_along_axis(dispatch_BTE, np.asarray(experts_BTK), axis=-1) > 0
  np.testing.assert_array_equal(kept_BTK, kept_ref_BTK)
  assert 0 < (~kept_BTK).sum() < kept_BTK.size
  # No expert takes more than its capacity from a row.
  e_BTK = np.where(kept_BTK, np.asarray(experts_BTK), -1)
  per_row_E = np.stack([(e_BTK == e).sum(axis=(1, 2)) for e in range(4)], -1)
  assert per_row_E.max() <= capacity(moe, t)


def _mesh(data, expert):
  m = get_config().mesh
  m.data, m.fsdp, m.expert, m.tensor = data, 1, expert, 1
  return parallel.build_mesh(m, devices=jax.devices()[:data * expert])


def test_expert_parallel_exchange_equals_one_device():
  # Dropless here; tests/unit/model/test_moe.py runs the expert=4 x data=2 train step with
  # capacity (and drops) through the same exchange.
  cfg = _cfg(capacity_factor=0.0)
  x_BTD = jax.random.normal(jax.random.key(4), (8, SEQ_LEN, cfg.width))
  ref = _loss_and_grads(_moe(cfg, 'tiled'), 'grouped', x_BTD)
  mesh = _mesh(2, 4)
  rules = parallel.rules_for(get_config().mesh)
  with parallel.use_rules(mesh, rules):
    got = _loss_and_grads(_moe(cfg, 'tiled'), 'grouped', x_BTD)
    hlo = jax.jit(lambda x: _moe(cfg, 'tiled')(x)[0]).lower(x_BTD).compile().as_text()
  _assert_same(ref, got)
  assert hlo.count('all-to-all') >= 2  # rows to their experts' devices and back
