"""lm/model/moe.py: routing, capacity, auxiliary losses, the model with experts, and expert
parallelism (expert=4 x data=2 equals one device, and tokens move by all-to-all)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.default import get_config
from lm import parallel
from lm.model import ModelConfig, ModelDef, Transformer
from lm.model.config import MoEConfig
from lm.model.mlp import MLP
from lm.model.moe import MoE, capacity, route
from lm.train.optimizer import build_optimizer
from lm.train.state import fresh_state, state_shardings
from lm.train.step import make_train_step, moe_loss, moe_metrics

SEQ_LEN = 16


def _model_cfg(**moe) -> ModelConfig:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = 2, 32, 64, 4, 2
  c.unroll_layers = False
  c.moe.update({'num_experts': 4, 'top_k': 2, 'capacity_factor': 1.0, **moe})
  return ModelConfig.from_config(c, vocab_size=64, seq_len=SEQ_LEN)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize('mlp', ['swiglu', 'gelu'])
def test_one_expert_with_top1_equals_the_dense_mlp(mlp):
  cfg = dataclasses.replace(_model_cfg(num_experts=1, top_k=1), mlp=mlp, use_bias=True)
  moe = MoE(cfg, rngs=nnx.Rngs(0))
  dense = MLP(cfg, rngs=nnx.Rngs(1))
  dense.up.kernel[...] = moe.up[...][0]
  dense.up.bias[...] = moe.up_bias[...][0] + 0.1  # non-zero biases are carried over too
  moe.up_bias[...] = moe.up_bias[...] + 0.1
  dense.down.kernel[...] = moe.down[...][0]
  x_BTD = _x((3, SEQ_LEN, cfg.width))
  y_BTD, aux = moe(x_BTD)
  np.testing.assert_allclose(y_BTD, dense(x_BTD), rtol=1e-5, atol=1e-6)
  assert float(aux['dropped_fraction']) == 0.0


def _logits_for_choices(first_BT, second_BT=None, e=2):
  """Router logits whose top-1 (and top-2) choices are the given experts."""
  logits = np.zeros(first_BT.shape + (e,), np.float32)
  np.put_along_axis(logits, first_BT[..., None], 3.0, axis=-1)
  if second_BT is not None:
    np.put_along_axis(logits, second_BT[..., None], 2.0, axis=-1)
  return jnp.asarray(logits)


def test_routing_respects_capacity_and_reports_drops_exactly():
  # 8 tokens, 2 experts, top-1, capacity 0.5 * 8 / 2 = 2 slots per expert.
  moe = MoEConfig(num_experts=2, top_k=1, capacity_factor=0.5)
  assert capacity(moe, 8) == 2
  first_BT = np.array([[0, 0, 1, 0, 0, 1, 0, 0]])
  r = route(moe, _logits_for_choices(first_BT), None, (1, 8))
  dispatch_TEC = np.asarray(r.dispatch_BTEC[0])
  assert dispatch_TEC.sum(axis=0).max() == 1  # a slot holds at most one token
  kept_T = dispatch_TEC.sum(axis=(1, 2))
  # Expert 0 keeps its first two tokens (0, 1); expert 1 keeps both of its tokens.
  np.testing.assert_array_equal(kept_T, [1, 1, 1, 0, 0, 1, 0, 0])
  assert float(r.aux['dropped_fraction']) == pytest.approx(4 / 8)
  np.testing.assert_allclose(r.aux['expert_fraction'], [6 / 8, 2 / 8])
  # Combine weights are the router probabilities of the kept tokens only.
  probs_T = jax.nn.softmax(_logits_for_choices(first_BT)[0], -1).max(-1)
  np.testing.assert_allclose(np.asarray(r.combine_BTEC[0]).sum(axis=(1, 2)), probs_T * kept_T,
                             rtol=1e-6)

  # Top-2: every token's first choice is placed before any second choice.
  moe2 = MoEConfig(num_experts=2, top_k=2, capacity_factor=0.5)  # 0.5 * 4 * 2 / 2 = 2 slots
  first_BT, second_BT = np.array([[0, 0, 1, 0]]), np.array([[1, 1, 0, 1]])
  r2 = route(moe2, _logits_for_choices(first_BT, second_BT), None, (1, 4))
  d_TEC = np.asarray(r2.dispatch_BTEC[0])
  # Expert 0: first choices of tokens 0, 1 (token 3's is dropped), no room for token 2's second.
  np.testing.assert_array_equal(d_TEC[:, 0].sum(-1), [1, 1, 0, 0])
  # Expert 1: token 2's first choice takes slot 0, then token 0's second choice; 1, 3 drop.
  np.testing.assert_array_equal(d_TEC[:, 1].argmax(-1)[[2, 0]], [0, 1])
  np.testing.assert_array_equal(d_TEC[:, 1].sum(-1), [1, 0, 1, 0])
  assert float(r2.aux['dropped_fraction']) == pytest.approx(4 / 8)

  # Dropless: the same assignments, nothing dropped.
  r3 = route(dataclasses.replace(moe2, capacity_factor=0.0),
             _logits_for_choices(first_BT, second_BT), None, (1, 4))
  assert float(r3.aux['dropped_fraction']) == 0.0
  np.testing.assert_array_equal(np.asarray(r3.dispatch_BTEC).sum(axis=(2, 3)), 2)


def test_aux_losses_equal_a_hand_computation():
  logits_TE = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0], [2.0, 1.0, 0.0]],
                       np.float32)
  moe = MoEConfig(num_experts=3, top_k=1, capacity_factor=0.0, aux_loss_weight=0.1,
                  z_loss_weight=0.01)
  r = route(moe, jnp.asarray(logits_TE[None]), None, (1, 4))
  p_TE = np.exp(logits_TE) / np.exp(logits_TE).sum(-1, keepdims=True)
  choice_T = [0, 1, 2, 0]
  f_E = np.bincount(choice_T, minlength=3) / 4  # [2/4, 1/4, 1/4]
  load_balance = 3 * np.sum(f_E * p_TE.mean(0))
  z_loss = np.mean(np.log(np.exp(logits_TE).sum(-1)) ** 2)
  assert float(r.aux['load_balance']) == pytest.approx(load_balance, rel=1e-6)
  assert float(r.aux['z_loss']) == pytest.approx(z_loss, rel=1e-6)
  aux = {k: v[None] for k, v in r.aux.items()}  # one MoE layer
  assert float(moe_loss(aux, moe)) == pytest.approx(0.1 * load_balance + 0.01 * z_loss, rel=1e-6)
  metrics = moe_metrics(aux, moe)
  assert float(metrics['moe/layer0/expert0_tokens']) == pytest.approx(0.5)


@pytest.mark.parametrize('routing', ['domain', 'domain+learned'])
def test_domain_routing_sends_each_domains_tokens_only_to_its_experts(routing):
  moe = MoEConfig(num_experts=6, top_k=2, capacity_factor=0.0, routing=routing, num_domains=3)
  b, t = 4, 12
  domains_BT = jax.random.randint(jax.random.key(1), (b, t), 0, 3)
  logits_BTE = _x((b, t, 6), seed=2)
  r = route(moe, logits_BTE, domains_BT, (b, t))
  used_BTE = np.asarray(r.dispatch_BTEC).sum(-1) > 0
  owner_E = np.arange(6) // 2
  owned_BTE = owner_E == np.asarray(domains_BT)[..., None]
  assert not (used_BTE & ~owned_BTE).any()
  assert used_BTE.sum(-1).min() == 2  # two experts per token (both of its domain's)
  np.testing.assert_allclose(np.asarray(r.combine_BTEC).sum(axis=(2, 3)), 1.0, rtol=1e-6)


def test_model_with_experts_every_other_layer_counts_and_decodes():
  cfg = _model_cfg(every=2, shared_expert=True)  # layer 0 dense, layer 1 MoE
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == cfg.param_count()
  tokens_BT = jax.random.randint(jax.random.key(0), (2, SEQ_LEN), 0, cfg.vocab_size)
  logits_BTV, aux = jax.jit(lambda t: model(t, return_aux=True))(tokens_BT)
  assert aux['load_balance'].shape == (1,) and aux['expert_fraction'].shape == (1, 4)
  # The KV-cache path gives the same logits (prefill of the whole row).
  cache = {k: jnp.zeros((2, 2, SEQ_LEN, cfg.num_kv_heads, cfg.head_dim)) for k in 'kv'}
  positions_BT = jnp.broadcast_to(jnp.arange(SEQ_LEN), (2, SEQ_LEN))
  decoded_BTV, _ = jax.jit(model.decode)(tokens_BT, positions_BT, cache)
  np.testing.assert_allclose(decoded_BTV, logits_BTV, rtol=1e-4, atol=1e-4)


def _mesh(data: int, expert: int):
  m = get_config().mesh
  m.data, m.fsdp, m.expert, m.tensor = data, 1, expert, 1
  return parallel.build_mesh(m, devices=jax.devices()[:data * expert])


def _train_steps(model_cfg, mesh, batches_KBT):
  rules = parallel.rules_for(get_config().mesh)
  model_def = ModelDef.create(model_cfg)
  opt_cfg = get_config().optimizer
  opt_cfg.warmup_steps = 1
  optimizer, schedule = build_optimizer(opt_cfg, total_steps=10)
  shardings = state_shardings(model_def, optimizer, mesh, rules)
  state = jax.device_put(jax.jit(lambda: fresh_state(model_def, optimizer, 0))(), shardings)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1)
  step_fn = make_train_step(model_def, optimizer, schedule, grad_accum=1, mesh=mesh, rules=rules,
                            shardings=shardings, batch_sharding=batch_sharding)
  batches = parallel.global_batch(batches_KBT, batch_sharding, batch_axis=1)
  compiled = step_fn.lower(state, batches).compile()
  state, metrics = compiled(state, batches)
  hlo = compiled.as_text()
  return jax.device_get(state), jax.device_get(metrics), hlo, shardings


def test_expert_parallel_step_equals_the_single_device_step():
  cfg = dataclasses.replace(_model_cfg(top_k=2, capacity_factor=1.0), num_layers=1)
  rng = np.random.default_rng(0)
  k, b = 2, 8
  tokens = rng.integers(0, cfg.vocab_size, (k, b, SEQ_LEN + 1)).astype(np.int32)
  batches_KBT = {'inputs': tokens[..., :-1], 'targets': tokens[..., 1:],
                 'segment_ids': np.ones((k, b, SEQ_LEN), np.int32),
                 'positions': np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32),
                                              (k, b, SEQ_LEN)).copy(),
                 'weights': np.ones((k, b, SEQ_LEN), np.float32)}
  state_1, metrics_1, _, _ = _train_steps(cfg, _mesh(1, 1), batches_KBT)
  state_8, metrics_8, hlo, shardings = _train_steps(cfg, _mesh(2, 4), batches_KBT)
  # Each device holds one of the 4 experts' weights ...
  up = shardings['params']['blocks']['moe']['mlp']['up']
  assert up.spec[1] == 'expert', up.spec
  # ... and the dispatched tokens reach them by all-to-all.
  assert 'all-to-all' in hlo
  assert metrics_1['moe/layer0/dropped_fraction'].max() > 0  # capacity 1.0 does drop
  for key, value in metrics_1.items():
    np.testing.assert_allclose(metrics_8[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  flat_1 = jax.tree_util.tree_leaves_with_path(state_1['params'])
  flat_8 = dict(jax.tree_util.tree_leaves_with_path(state_8['params']))
  for path, x in flat_1:
    np.testing.assert_allclose(flat_8[path], x, rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
