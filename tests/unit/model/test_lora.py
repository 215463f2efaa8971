"""LoRA: a zero-initialised B changes nothing, only adapters train, merging is exact (in
memory and as a run written by lm.tools.lora_merge)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.default import get_config
from lm import config as config_lib
from lm import parallel
from lm.data.tokenizers import ByteTokenizer
from lm.errors import UserError
from lm.model import ModelConfig, ModelDef, lora
from lm.run import load_run, write_run
from lm.tools.lora_merge import merge_workdir
from lm.train import finetune
from lm.train.step import make_train_step

VOCAB, T = 64, 16
TARGETS = ('qkv', 'out', 'mlp_in', 'mlp_out')


def _cfg(rank=4, dropout=0.0, num_classes=0):
  c = get_config()
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads, c.model.num_kv_heads = 4, 2
  c.model.vocab_size, c.model.max_len, c.model.num_classes = VOCAB, T, num_classes
  c.lora.rank, c.lora.alpha, c.lora.dropout, c.lora.targets = rank, 8.0, dropout, TARGETS
  c.optimizer.lr, c.optimizer.warmup_steps = 1e-2, 0
  c.train.steps = 3
  return c


def _model_def(c) -> ModelDef:
  return ModelDef.create(ModelConfig.from_config(c.model).with_lora(c.lora))


def _tokens(seed=0):
  return jax.random.randint(jax.random.key(seed), (2, T), 3, VOCAB)


_FORWARD: dict = {}


def _logits(model_def: ModelDef, params: dict, tokens, key=None) -> np.ndarray:
  """The model's logits, jit-compiled once per model (eager NNX calls are slow)."""
  if model_def.cfg not in _FORWARD:
    _FORWARD[model_def.cfg] = jax.jit(lambda p, t, k: model_def.merge(p)(t, dropout_key=k))
  return np.asarray(_FORWARD[model_def.cfg](params, tokens, key))


def _without_lora(params: dict) -> dict:
  return lora.merge_params(params, 0.0)  # scale 0: the base kernels unchanged


def test_zero_b_adapters_compute_exactly_the_base_model():
  c = _cfg()
  adapted = _model_def(c)
  params = jax.jit(adapted.init_params)(jax.random.key(1))
  assert any(lora.is_lora(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
  c.lora.rank = 0
  base = _model_def(c)
  tokens = _tokens()
  np.testing.assert_array_equal(_logits(adapted, params, tokens),
                                _logits(base, _without_lora(params), tokens))


def test_training_changes_only_adapters_and_merging_keeps_the_outputs():
  c = _cfg(dropout=0.1)
  model_def = _model_def(c)
  optimizer, schedule = finetune.build_optimizer(c)
  mesh = parallel.build_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1}))
  shardings = finetune.state_shardings(model_def, optimizer, mesh, parallel.rules_for(c.mesh), c)
  params = jax.jit(model_def.init_params)(jax.random.key(2))
  state = jax.device_put({'params': params, 'opt_state': optimizer.init(params),
                          'step': jnp.zeros((), jnp.int32),
                          'rng': jax.random.key_data(jax.random.key(3))}, shardings)
  before = jax.device_get(state['params'])
  step = make_train_step(model_def, optimizer, schedule, grad_accum=1, mesh=mesh,
                         rules=parallel.rules_for(c.mesh), shardings=shardings,
                         batch_sharding=parallel.batch_sharding(mesh, leading_dims=1))
  tokens = np.asarray(jax.random.randint(jax.random.key(4), (3, 8, T + 1), 3, VOCAB))
  batches = {'inputs': tokens[..., :-1], 'targets': tokens[..., 1:],
             'segment_ids': np.ones((3, 8, T), np.int32),
             'positions': np.broadcast_to(np.arange(T, dtype=np.int32), (3, 8, T)).copy(),
             'weights': np.ones((3, 8, T), np.float32)}
  state, metrics = step(state, batches)
  after = jax.device_get(state['params'])
  assert np.all(np.isfinite(metrics['train/loss']))
  for (path, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                              jax.tree.leaves(after), strict=True):
    if lora.is_lora(path):
      assert not np.array_equal(old, new), jax.tree_util.keystr(path)
    else:
      np.testing.assert_array_equal(old, new, err_msg=jax.tree_util.keystr(path))
  # The optimizer keeps moments for the adapters only.
  n_adapters, n_total = lora.count(after)
  moments = sum(x.size for x in jax.tree.leaves(state['opt_state']) if x.ndim)
  assert moments == 2 * n_adapters < n_total

  merged = lora.merge_params(after, c.lora.alpha / c.lora.rank)
  c.lora.rank = 0
  plain = _model_def(c)
  tokens = _tokens(5)
  adapted = _logits(model_def, after, tokens)
  np.testing.assert_allclose(_logits(plain, merged, tokens), adapted, atol=1e-5)
  assert not np.allclose(_logits(plain, _without_lora(after), tokens), adapted, atol=1e-5)


def test_adapter_count_matches_the_config_and_the_summary_reports_savings():
  c = _cfg(rank=8, num_classes=3)
  model_def = _model_def(c)
  params = jax.eval_shape(model_def.init_params, jax.random.key(0))
  n_adapters, n_total = lora.count(params)
  assert n_adapters == c.model.num_layers * model_def.cfg.lora_params_per_layer()
  assert n_total == model_def.cfg.param_count()
  optimizer, _ = finetune.build_optimizer(c)
  (line,) = finetune.summary_lines(model_def, optimizer, c)
  head = 3 * (32 + 1)
  assert f'trainable {n_adapters + head:,} of {n_total:,}' in line and 'saves' in line
  opt_leaves = jax.tree.leaves(jax.eval_shape(optimizer.init, params))
  assert sum(x.size for x in opt_leaves if x.ndim) == 2 * (n_adapters + head)


def test_lora_dropout_is_active_only_with_a_key():
  c = _cfg(dropout=0.5)
  model_def = _model_def(c)
  params = jax.jit(model_def.init_params)(jax.random.key(6))
  params = jax.tree_util.tree_map_with_path(  # non-zero B so the adapters contribute
      lambda p, x: jnp.ones_like(x) * 0.1 if 'lora_b' in jax.tree_util.keystr(p) else x, params)
  tokens = _tokens(7)
  a = _logits(model_def, params, tokens, jax.random.key(0))
  b = _logits(model_def, params, tokens, jax.random.key(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(_logits(model_def, params, tokens),
                                _logits(model_def, params, tokens))


def test_optax_sanity_train_only_gives_zero_updates_to_frozen_leaves():
  inner = optax.sgd(1.0)
  opt = finetune.train_only(inner, lambda path: 'a' in jax.tree_util.keystr(path))
  params = {'a': jnp.ones(2), 'b': {'c': jnp.ones(3)}}
  updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
  np.testing.assert_array_equal(updates['a'], -np.ones(2))
  np.testing.assert_array_equal(updates['b']['c'], np.zeros(3))


def test_lora_merge_writes_a_run_without_adapters_that_computes_the_same(tmp_path):
  """lm.tools.lora_merge: load_run of a LoRA run -> write_run of the merged model; the merged
  run loads through the one loader with lora.rank=0 and gives the adapted model's logits."""
  c = _cfg()
  c.model.vocab_size = 260  # the byte tokenizer's 259 ids fit
  c.data.tokenizer.kind = 'byte'
  c = config_lib.resolve(c, num_devices=jax.device_count())
  adapted = _model_def(c)
  params = jax.jit(adapted.init_params)(jax.random.key(2))
  params = jax.tree_util.tree_map_with_path(  # non-zero B: the adapters change the outputs
      lambda p, x: x + 0.05 if 'lora_b' in jax.tree_util.keystr(p) else x, params)
  write_run(tmp_path / 'lora', c, params, ByteTokenizer(), step=3)
  path = merge_workdir(tmp_path / 'lora', tmp_path / 'merged', log=lambda _: None)
  assert path.endswith('/merged/checkpoints/3')
  merged = load_run(tmp_path / 'merged')
  assert merged.config.lora.rank == 0 and merged.step == 3
  assert not any(lora.is_lora(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      merged.params)[0])
  tokens = _tokens()
  np.testing.assert_allclose(_logits(merged.model_def, merged.params, tokens),
                             _logits(adapted, params, tokens), rtol=1e-4, atol=1e-4)
  with pytest.raises(UserError, match='--out=.*merged already exists'):
    merge_workdir(tmp_path / 'lora', tmp_path / 'merged', log=lambda _: None)
  with pytest.raises(UserError, match='trained without LoRA'):
    merge_workdir(tmp_path / 'merged', tmp_path / 'again', log=lambda _: None)
  assert not (tmp_path / 'again').exists()
