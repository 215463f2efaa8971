"""lm.parallel: meshes and presets change where arrays live, never the numbers.

A tiny model (2 layers, width 32) trains 20 steps in one dispatch on several meshes and
presets from the same host state and batches; the losses must agree with one device.
The rest checks placements (ZeRO-3 splits every large array 8 ways, each preset gives
its specs), mesh validation (a bad mesh is a ConfigError naming the key) and remat.
(Gradient accumulation vs one big batch is in tests/unit/train/test_train.py; multi-process runs
are in tests/integration/test_multihost.py.)
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.default import get_config
from lm import config as config_lib
from lm import parallel
from lm.config import ConfigError
from lm.model import ModelConfig, ModelDef
from lm.parallel import presets
from lm.train.optimizer import build_optimizer
from lm.train.state import fresh_state, state_shardings
from lm.train.step import make_train_step, token_losses

VOCAB, SEQ, BATCH, STEPS = 64, 16, 8, 20
MODEL = ModelConfig(vocab_size=VOCAB, num_layers=2, width=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, max_len=SEQ, unroll_layers=False)


def _mesh_cfg(preset: str = 'fsdp_tensor', **sizes):
  m = get_config().mesh
  m.data, m.preset = 1, preset
  for axis, size in sizes.items():
    m[axis] = size
  return m


def _mesh(mesh_cfg):
  n = math.prod(mesh_cfg[a] for a in parallel.MESH_AXES)
  return parallel.build_mesh(mesh_cfg, devices=jax.devices()[:n])


def _optimizer():
  opt = get_config().optimizer
  opt.lr, opt.warmup_steps = 1e-2, 2
  return build_optimizer(opt, total_steps=STEPS)


@functools.cache
def _host_state() -> dict:
  """Step 0 on the host, computed once; every mesh starts from these very numbers."""
  optimizer, _ = _optimizer()
  return jax.device_get(jax.jit(lambda: fresh_state(ModelDef.create(MODEL), optimizer, 0))())


@functools.cache
def _batches_KBT() -> dict[str, np.ndarray]:
  """STEPS batches of rows counting up by a per-row stride: learnable, not constant."""
  rng = np.random.default_rng(0)
  start = rng.integers(0, VOCAB, (STEPS, BATCH, 1))
  stride = rng.integers(1, 4, (STEPS, BATCH, 1))
  tokens = (start + stride * np.arange(SEQ + 1)) % VOCAB
  shape = (STEPS, BATCH, SEQ)
  return {'inputs': tokens[..., :-1].astype(np.int32),
          'targets': tokens[..., 1:].astype(np.int32),
          'positions': np.broadcast_to(np.arange(SEQ, dtype=np.int32), shape).copy(),
          'segment_ids': np.ones(shape, np.int32), 'weights': np.ones(shape, np.float32)}


def _losses(mesh_cfg) -> np.ndarray:
  """The 20 per-step losses of one dispatch on the mesh `mesh_cfg` describes."""
  mesh, rules = _mesh(mesh_cfg), parallel.rules_for(mesh_cfg)
  model_def = ModelDef.create(MODEL)
  optimizer, schedule = _optimizer()
  shardings = state_shardings(model_def, optimizer, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1, rules=rules)
  step = make_train_step(model_def, optimizer, schedule, grad_accum=1, mesh=mesh, rules=rules,
                         shardings=shardings, batch_sharding=batch_sharding)
  state = jax.device_put(_host_state(), shardings)
  _, metrics = step(state, parallel.global_batch(_batches_KBT(), batch_sharding, batch_axis=1))
  return np.asarray(metrics['train/loss'])


def test_every_mesh_and_preset_trains_to_the_same_losses():
  reference = _losses(_mesh_cfg())  # one device
  assert reference[-1] < 0.8 * reference[0], reference  # it learns: the check is not vacuous
  for mesh_cfg in [_mesh_cfg(data=8), _mesh_cfg('fsdp', fsdp=8),
                   _mesh_cfg(data=2, fsdp=2, tensor=2), _mesh_cfg(fsdp=4, tensor=2)]:
    np.testing.assert_allclose(_losses(mesh_cfg), reference, rtol=1e-5,
                               err_msg=str({a: mesh_cfg[a] for a in parallel.MESH_AXES}))


def test_zero3_splits_every_large_parameter_and_optimizer_array_eight_ways():
  mesh_cfg = _mesh_cfg('fsdp', fsdp=8)
  mesh, model_def = _mesh(mesh_cfg), ModelDef.create(MODEL)
  optimizer, _ = _optimizer()
  # The placement the train step is compiled for (and a restore lands in).
  state = jax.device_put(_host_state(), state_shardings(model_def, optimizer, mesh,
                                                        parallel.rules_for(mesh_cfg)))
  total = per_device0 = 0
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    shards = x.addressable_shards
    assert len(shards) == 8
    total += x.nbytes
    per_device0 += shards[0].data.nbytes
    if x.nbytes > 512:  # every array but the norm scales, step and RNG key
      assert [s.data.nbytes for s in shards] == [x.nbytes // 8] * 8, (path, x.sharding)
      assert len({str(s.index) for s in shards}) == 8, path  # eight pieces, not copies
  assert total > 3 * 4 * MODEL.param_count() * 0.99  # params + two Adam moments
  assert per_device0 < 1.05 * total / 8, (per_device0, total)


def _specs(preset: str, rules=()) -> dict[str, P]:
  mesh_cfg = _mesh_cfg(preset, data=2, fsdp=2, tensor=2)
  if preset == 'fsdp':
    mesh_cfg.fsdp, mesh_cfg.tensor = 4, 1  # ZeRO-3 has no tensor axis
  if preset == 'data':
    mesh_cfg.fsdp = 1
  mesh_cfg.rules = rules
  mesh, model_def = _mesh(mesh_cfg), ModelDef.create(MODEL)
  rules = parallel.rules_for(mesh_cfg)
  shardings = parallel.shardings_for(model_def.logical_axes(),
                                     jax.eval_shape(model_def.init_params, jax.random.key(0)),
                                     mesh, rules)
  flat = {jax.tree_util.keystr(p, simple=True, separator='.'): s.spec
          for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
  flat['batch'] = parallel.batch_sharding(mesh, rules=rules).spec
  return flat


def test_presets_place_parameters_and_the_batch_as_documented():
  # [layers, D, K, G + 2, H] and [layers, F, D]; [V, D]; [layers, D]
  qkv, down, embed, norm = ('blocks.attn.qkv.kernel', 'blocks.mlp.down.kernel', 'embed',
                            'blocks.attn_norm.scale')
  specs = _specs('fsdp_tensor')
  assert specs[qkv] == P(None, 'fsdp', 'tensor', None, None)
  assert specs[down] == P(None, 'tensor', 'fsdp')
  assert specs[embed] == P('tensor', 'fsdp')
  assert specs[norm] == P(None, None)
  assert specs['batch'] == P(('data', 'fsdp'))

  specs = _specs('data')  # data=2, tensor=2: the batch over both, nothing split
  assert all(s == P(*[None] * len(s)) for k, s in specs.items() if k != 'batch'), specs
  assert specs['batch'] == P(('data', 'tensor'))

  specs = _specs('fsdp')  # data=2, fsdp=4: only the 'embed' dims split, over fsdp
  assert specs[qkv] == P(None, 'fsdp', None, None, None)
  assert specs[down] == P(None, None, 'fsdp')
  assert specs[embed] == P(None, 'fsdp')
  assert specs['batch'] == P(('data', 'fsdp'))

  specs = _specs('tensor')  # data=2, fsdp=2 (a data axis here), tensor=2
  assert specs[qkv] == P(None, None, 'tensor', None, None)
  assert specs[down] == P(None, 'tensor', None)
  assert specs[embed] == P('tensor', None)
  assert specs['batch'] == P(('data', 'fsdp'))

  # mesh.rules overrides one logical axis on top of the preset and leaves the rest.
  specs = _specs('fsdp_tensor', rules=(('vocab', ()), ('embed', '')))
  assert specs[embed] == P(None, None)
  assert specs[qkv] == P(None, None, 'tensor', None, None)


def test_preset_rules_and_config_enum_agree():
  assert config_lib.ENUMS['mesh.preset'] == tuple(presets.PRESETS)
  assert parallel.MESH_AXES == config_lib.MESH_AXES
  assert parallel.MESH_AXES == ('data', 'fsdp', 'sequence', 'expert', 'tensor')
  rules = dict(presets.preset_rules('fsdp', [('mlp', ('tensor',)), ('new', 'expert')]))
  assert rules['mlp'] == ('tensor',) and rules['new'] == ('expert',)
  assert rules['embed'] == ('fsdp',)  # kept from the preset
  with pytest.raises(ValueError, match='fsdp_tensor'):
    presets.preset_rules('zero3')


def _mesh_error(updates: dict, num_devices: int = 8, num_granules: int | None = None) -> str:
  c = get_config()
  for key, value in updates.items():
    section, name = key.split('.')
    c[section][name] = value
  with pytest.raises(ConfigError) as e:
    config_lib.resolve(c, num_devices=num_devices, num_granules=num_granules)
  return str(e.value)


@pytest.mark.parametrize('updates,num_granules,expected', [
    ({'mesh.data': 2, 'mesh.expert': 2}, None, ['2*1*1*2*1 = 4', 'this run has 8']),
    ({'mesh.tensor': 4, 'model.num_kv_heads': 2}, None, ['mesh.tensor=4',
                                                          'model.num_kv_heads=2']),
    ({'mesh.preset': 'fsdp', 'mesh.tensor': 2}, None, ['mesh.tensor=2', "mesh.preset='fsdp'",
                                                       'Set mesh.tensor=1']),
    ({'mesh.preset': 'zero3'}, None, ['mesh.preset', "'fsdp'"]),
    ({'mesh.dcn_data': 2}, 1, ['mesh.dcn_data=2', 'split 2 slices/processes', 'has 1']),
    ({'mesh.dcn_data': -1, 'mesh.dcn_fsdp': -1}, None, ['more than one', 'mesh.dcn_data',
                                                       'mesh.dcn_fsdp']),
    ({'mesh.dcn_tensor': 2, 'model.num_heads': 4, 'model.num_kv_heads': 2}, 2,
     ['mesh.dcn_tensor=2', 'does not split the batch']),
    ({'mesh.dcn_fsdp': -1}, None, ['mesh.data=-1', 'mesh.dcn_fsdp=-1', 'explicitly']),
    ({'mesh.fsdp': 2, 'mesh.dcn_data': 2, 'train.batch_size': 12}, 2,
     ['train.batch_size=12', 'mesh.data*mesh.dcn_data*mesh.fsdp*mesh.expert = 2*2*2*1 = 8']),
    ({'mesh.rules': (('heads', ('tnesor',)),)}, None, ['mesh.rules[0]', 'tnesor']),
])
def test_bad_meshes_are_config_errors_naming_the_key(updates, num_granules, expected):
  message = _mesh_error(updates, num_granules=num_granules)
  for part in expected:
    assert part in message, (part, message)


def test_dcn_sizes_resolve_and_a_mesh_for_other_granules_is_refused():
  c = get_config()
  c.mesh.fsdp, c.mesh.dcn_data, c.mesh.dcn_fsdp = 2, -1, 1
  resolved = config_lib.resolve(c, num_devices=8, num_granules=2)
  assert ((resolved.mesh.data, resolved.mesh.fsdp), resolved.mesh.dcn_data) == ((2, 2), 2)
  # The preset's own head check does not apply where the preset splits no heads.
  c = get_config()
  c.mesh.preset, c.mesh.tensor, c.model.num_heads, c.model.num_kv_heads = 'data', 2, 3, 3
  c.model.width = 96
  assert config_lib.resolve(c, num_devices=8).mesh.data == 4
  # One process: a DCN size > 1 has no second process to go to.
  mesh_cfg = _mesh_cfg(data=4, dcn_data=2)
  with pytest.raises(ConfigError, match='mesh.dcn_data=2.*devices form 1'):
    parallel.build_mesh(mesh_cfg)
  with pytest.raises(ConfigError, match='needs 16 devices, found 8'):
    parallel.build_mesh(_mesh_cfg(data=8, fsdp=2))


def test_remat_policies_give_the_same_gradients_with_less_temp_memory():
  batch = {k: jnp.asarray(v[0]) for k, v in _batches_KBT().items()}
  params = _host_state()['params']
  grads, temp = {}, {}
  for remat in ('none', 'full', 'dots'):
    model_def = ModelDef.create(MODEL.__class__(**{**MODEL.__dict__, 'remat': remat}))

    def loss(p, b, model_def=model_def):
      ce_BT, w_BT = token_losses(model_def, p, b, None)
      return jnp.sum(ce_BT * w_BT) / jnp.sum(w_BT)

    compiled = jax.jit(jax.grad(loss)).lower(params, batch).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    grads[remat] = jax.device_get(compiled(params, batch))
  for remat in ('full', 'dots'):
    for a, b in zip(jax.tree.leaves(grads[remat]), jax.tree.leaves(grads['none']), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert temp['full'] < temp['dots'] < temp['none'], temp
