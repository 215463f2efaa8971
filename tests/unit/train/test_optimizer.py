"""lm.train.optimizer / lm.train.muon: Muon's update by hand, its state sharded and
checkpointed like AdamW's, and the warmup-stable-decay schedule at its boundaries."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.default import get_config
from lm import config as config_lib
from lm import parallel
from lm.checkpoint import Checkpointer
from lm.model import ModelConfig, ModelDef
from lm.train import muon
from lm.train.optimizer import build_optimizer, learning_rate_schedule
from lm.train.state import abstract_state, fresh_state, state_shardings
from lm.train.step import make_train_step

SEQ_LEN = 16


def _ns_by_hand(x: np.ndarray, steps: int = 5) -> np.ndarray:
  """The quintic Newton-Schulz iteration written out in float64 numpy."""
  a, b, c = 3.4445, -4.7750, 2.0315
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (np.linalg.norm(x) + 1e-7)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def test_newton_schulz_equals_the_hand_computation_and_orthogonalises():
  rng = np.random.default_rng(0)
  for shape in ((3, 5), (6, 4)):
    x = rng.normal(size=shape)
    got = np.asarray(muon.newton_schulz(jnp.asarray(x, jnp.float32)), np.float64)
    np.testing.assert_allclose(got, _ns_by_hand(x), rtol=1e-4, atol=1e-5)
    singular = np.linalg.svd(got, compute_uv=False)
    assert singular.min() > 0.6 and singular.max() < 1.3, singular  # near-orthogonal
    # Same singular vectors as x: got ~ U f(S) V^T.
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    m = u.T @ got @ vt.T
    np.testing.assert_allclose(m - np.diag(np.diag(m)), 0.0, atol=1e-4)


def _tiny_params(rng):
  return {'blocks': {'mlp': {'up': {'kernel': rng.normal(size=(2, 4, 6)).astype(np.float32)}},
                     'mlp_norm': {'scale': np.ones((2, 4), np.float32)}},
          'embed': rng.normal(size=(5, 4)).astype(np.float32)}


TINY_AXES = {'blocks': {'mlp': {'up': {'kernel': ('layers', 'embed', 'mlp')}},
                        'mlp_norm': {'scale': ('layers', 'norm')}},
             'embed': ('vocab', 'embed')}


@pytest.mark.parametrize('ns_steps', [5, 3])  # the default and optimizer.muon_ns_steps=3
def test_muon_update_equals_a_hand_computation(ns_steps):
  rng = np.random.default_rng(1)
  params, grads = _tiny_params(rng), _tiny_params(rng)
  lr, muon_lr, beta, wd = 1e-3, 0.02, 0.95, 0.1
  dims = muon.matrix_dims(TINY_AXES)
  assert dims['blocks']['mlp']['up']['kernel'] == muon.MatrixDims((0,), (1,), (2,))
  assert dims['embed'] is None and dims['blocks']['mlp_norm']['scale'] is None
  mask = {'blocks': {'mlp': {'up': {'kernel': True}}, 'mlp_norm': {'scale': False}},
          'embed': False}
  opt = muon.muon_adamw(optax.constant_schedule(lr), lr=lr, muon_lr=muon_lr, dims=dims,
                        momentum=beta, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd, mask=mask,
                        ns_steps=ns_steps)
  state = opt.init(params)
  updates, state = opt.update(grads, state, params)
  # The matrix, per layer: momentum (1-b) g, Nesterov (1-b) g + b mu, orthogonalised and
  # scaled by sqrt(fan_out / fan_in), plus decoupled weight decay, times -muon_lr.
  g, p = grads['blocks']['mlp']['up']['kernel'], params['blocks']['mlp']['up']['kernel']
  for layer in range(2):
    mu = (1 - beta) * g[layer]
    nesterov = (1 - beta) * g[layer] + beta * mu
    ns = _ns_by_hand(nesterov.astype(np.float64), ns_steps)
    want = -muon_lr * (ns * np.sqrt(6 / 4) + wd * p[layer])
    np.testing.assert_allclose(updates['blocks']['mlp']['up']['kernel'][layer], want,
                               rtol=1e-4, atol=1e-6)
  # Everything else is AdamW (here without decay), exactly optax's.
  adam = optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
  want, _ = adam.update(grads['embed'], adam.init(params['embed']), params['embed'])
  np.testing.assert_allclose(updates['embed'], want, rtol=1e-6)
  assert int(state.count) == 1


def test_config_muon_ns_steps_reaches_the_update():
  rng = np.random.default_rng(2)
  params, grads = _tiny_params(rng), _tiny_params(rng)

  def update(**kw):
    opt, _ = build_optimizer(_opt_cfg(name='muon', schedule='constant', warmup_steps=0,
                                      grad_clip=0.0, weight_decay=0.0, **kw), 10, TINY_AXES)
    return opt.update(grads, opt.init(params), params)[0]['blocks']['mlp']['up']['kernel']

  three = update(muon_ns_steps=3)
  assert not np.allclose(three, update())  # the default, 5 iterations
  np.testing.assert_allclose(three, update(muon_ns_steps=3), rtol=0)
  # First step, no decay: -muon_lr * NS(Nesterov momentum, a multiple of g) * sqrt(6 / 4).
  g = grads['blocks']['mlp']['up']['kernel'][0].astype(np.float64)
  want = -_opt_cfg().muon_lr * _ns_by_hand(g, 3) * np.sqrt(6 / 4)
  np.testing.assert_allclose(three[0], want, rtol=1e-4, atol=1e-6)


def _opt_cfg(**kw) -> ml_collections.ConfigDict:
  c = get_config().optimizer
  c.update(kw)
  return c


def test_wsd_learning_rate_at_its_boundaries():
  c = _opt_cfg(schedule='wsd', lr=1e-2, min_lr=1e-3, warmup_steps=10, decay_fraction=0.25)
  lr = learning_rate_schedule(c, total_steps=100)
  assert float(lr(0)) == pytest.approx(1e-2 / 10)  # nanoGPT's warmup: lr * (step + 1) / 10
  assert float(lr(9)) == pytest.approx(1e-2)
  assert float(lr(10)) == pytest.approx(1e-2)  # stable ...
  assert float(lr(75)) == pytest.approx(1e-2)  # ... until the last 25 steps
  assert float(lr(76)) == pytest.approx(1e-2 - (1e-2 - 1e-3) / 25)
  assert float(lr(100)) == pytest.approx(1e-3)
  no_decay = learning_rate_schedule(_opt_cfg(schedule='wsd', decay_fraction=0.0, lr=1e-2),
                                    total_steps=100)
  assert float(no_decay(99)) == pytest.approx(1e-2)


def _model_def(layers: int = 1) -> ModelDef:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = layers, 32, 64, 4, 2
  return ModelDef.create(ModelConfig.from_config(c, vocab_size=64, seq_len=SEQ_LEN))


def _muon(layers: int = 1):
  return build_optimizer(_opt_cfg(name='muon', warmup_steps=1, schedule='wsd'), 10,
                         _model_def(layers).logical_axes())


@functools.cache
def _step_fn(mesh_dims: tuple[int, int, int], layers: int = 1):
  """The jit'd Muon train step and state shardings on a data x fsdp x tensor mesh
  (compiled once per mesh for the whole module)."""
  mesh = _mesh(*mesh_dims)
  model_def = _model_def(layers)
  optimizer, schedule = _muon(layers)
  rules = parallel.rules_for(get_config().mesh)
  shardings = state_shardings(model_def, optimizer, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1)
  step = make_train_step(model_def, optimizer, schedule, grad_accum=1, mesh=mesh, rules=rules,
                         shardings=shardings, batch_sharding=batch_sharding)
  return step, shardings, batch_sharding


def _steps(mesh_dims, batches, state=None, layers: int = 1):
  """Two steps of Muon from the fresh state (or `state`): (state, metrics, shardings)."""
  step, shardings, batch_sharding = _step_fn(mesh_dims, layers)
  if state is None:
    state = fresh_state(_model_def(layers), _muon(layers)[0], 0)
  state = jax.device_put(state, shardings)
  state, metrics = step(state, parallel.global_batch(batches, batch_sharding, batch_axis=1))
  return state, metrics, shardings


def _batches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 64, (2, 8, SEQ_LEN + 1), dtype=np.int32)
  return {'inputs': tokens[..., :-1], 'targets': tokens[..., 1:],
          'positions': np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32), (2, 8, SEQ_LEN)).copy(),
          'segment_ids': np.ones((2, 8, SEQ_LEN), np.int32),
          'weights': np.ones((2, 8, SEQ_LEN), np.float32)}


def _mesh(data, fsdp, tensor):
  m = get_config().mesh
  m.data, m.fsdp, m.tensor = data, fsdp, tensor
  return parallel.build_mesh(m, devices=jax.devices()[:data * fsdp * tensor])


def test_muon_sharded_step_equals_single_device_step():
  state_1, metrics_1, _ = _steps((1, 1, 1), _batches(0))
  state_8, metrics_8, shardings = _steps((2, 2, 2), _batches(0))
  np.testing.assert_allclose(metrics_8['train/loss'], metrics_1['train/loss'], rtol=1e-5)
  one, eight = jax.device_get(state_1), jax.device_get(state_8)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(eight['params'])[0],
                          jax.tree.leaves(one['params']), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  # The momentum is split like its parameter (here the MLP kernel over fsdp and tensor).
  mu = state_8['opt_state'][1].mu['blocks']['mlp']['up']['kernel']
  assert mu.sharding == state_8['params']['blocks']['mlp']['up']['kernel'].sharding
  assert len(mu.addressable_shards[0].data.reshape(-1)) < mu.size


def test_data_parallel_replicas_share_the_orthogonalisations():
  # 4 layers on 4 data-parallel devices: each replica orthogonalises one layer's matrices
  # and the program gathers the updates (an all-gather a replicated update has no need
  # of), and the step still equals the one-device step.
  state_1, metrics_1, _ = _steps((1, 1, 1), _batches(0), layers=4)
  state_4, metrics_4, _ = _steps((4, 1, 1), _batches(0), layers=4)
  np.testing.assert_allclose(metrics_4['train/loss'], metrics_1['train/loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(state_4['params'])),
                  jax.tree.leaves(jax.device_get(state_1['params'])), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  step, shardings, batch_sharding = _step_fn((4, 1, 1), 4)
  abstract = abstract_state(_model_def(4), _muon(4)[0], 0, shardings)
  batches = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in _batches(0).items()}
  hlo = step.lower(abstract, batches).compile().as_text()
  assert 'all-gather' in hlo


def test_muon_state_checkpoints_and_resumes_exactly(tmp_path):
  state, _, shardings = _steps((2, 2, 2), _batches(0))
  host = jax.device_get(state)
  model_def, (optimizer, _) = _model_def(), _muon()
  with Checkpointer(str(tmp_path / 'ckpt'), async_save=False) as ckpt:
    ckpt.save(2, state, data_state={}, config_json=config_lib.to_json(get_config()))
  with Checkpointer(str(tmp_path / 'ckpt'), read_only=True) as ckpt:
    restored, _, _ = ckpt.restore(abstract_state(model_def, optimizer, 0, shardings), 2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), host)
  # Two more steps from the restored state equal two more from the original.
  after_a, _, _ = _steps((2, 2, 2), _batches(1), state=host)
  after_b, _, _ = _steps((2, 2, 2), _batches(1), state=jax.device_get(restored))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after_a), jax.device_get(after_b))
