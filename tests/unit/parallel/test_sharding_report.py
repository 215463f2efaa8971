"""The sharding report: every parameter's logical axes, placement and bytes per device; the
one list of logical axis names covers every name the model uses."""

import jax

from configs.default import get_config
from lm import parallel
from lm.config import LORA_TARGETS
from lm.infer.sharding import CACHE_AXES
from lm.model import ModelConfig, ModelDef
from lm.parallel import rules as rules_lib
from lm.run import model_config

CFG = ModelConfig(vocab_size=64, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                  mlp_dim=128, max_len=16)


def _report(data, fsdp, tensor):
  mesh_cfg = get_config().mesh
  mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = data, fsdp, tensor
  mesh = parallel.build_mesh(mesh_cfg)
  model_def = ModelDef.create(CFG)
  abstract = jax.eval_shape(model_def.init_params, jax.random.key(0))
  axes = model_def.logical_axes()
  shardings = parallel.shardings_for(axes, abstract, mesh, parallel.rules_for(mesh_cfg))
  return parallel.sharding_report(axes, abstract, shardings)


def test_fsdp_report_lists_every_parameter_and_splits_the_bytes():
  table, totals = _report(1, 8, 1)
  assert totals['bytes'] == 4 * CFG.param_count()
  # Everything with an 'embed' axis is split 8 ways; only the norm scales are replicated.
  norms = 4 * (2 * CFG.num_layers * CFG.width + CFG.width)
  assert totals['bytes_per_device'] == (totals['bytes'] - norms) // 8 + norms
  lines = table.splitlines()
  row = next(line for line in lines if line.startswith('blocks.mlp.down.kernel'))
  assert "('layers', 'mlp', 'embed')" in row and "'fsdp'" in row
  assert f'{2 * 128 * 64 * 4:,}' in row and f'{2 * 128 * 64 * 4 // 8:,}' in row
  assert lines[-1].startswith('total:')


def test_data_parallel_report_replicates_everything():
  _, totals = _report(8, 1, 1)
  assert totals['bytes_per_device'] == totals['bytes']


def _names(tree) -> set[str]:
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple))
  return {a for axes in leaves for a in axes if a}


def test_every_logical_axis_the_model_uses_is_in_the_one_list(monkeypatch):
  """mesh.rules may only name lm.parallel.LOGICAL_AXES (lm.config checks it): the list must
  hold every name a parameter, an activation or the decode cache carries."""
  used: set[str] = set()
  to_spec = rules_lib.logical_to_spec

  def recording(axes, *args, **kwargs):  # what each constrain() in the model names
    used.update(a for a in axes if a)
    return to_spec(axes, *args, **kwargs)

  monkeypatch.setattr(rules_lib, 'logical_to_spec', recording)
  mesh_cfg = get_config().mesh
  mesh_cfg.data, mesh_cfg.expert = 4, 2
  mesh = parallel.build_mesh(mesh_cfg)
  variants = [{}, {'model.mlp': 'gelu', 'model.position': 'learned', 'model.use_bias': True,
                   'model.norm': 'layernorm', 'model.tie_embeddings': True},
              {'model.moe.num_experts': 2, 'model.moe.shared_expert': True,
               'model.use_bias': True, 'model.mlp': 'gelu',
               'model.moe.impl': 'dispatch'},  # the grouped path names 'batch', 'expert'
              {'model.num_classes': 3}, {'lora.rank': 2, 'lora.targets': LORA_TARGETS}]
  for updates in variants:
    c = get_config()
    c.model.update(num_layers=2, width=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    for key, value in updates.items():
      section, _, leaf = key.rpartition('.')
      node = c
      for part in section.split('.'):
        node = node[part]
      node[leaf] = value
    model_def = ModelDef.create(model_config(c, 64))
    used.update(_names(model_def.logical_axes()))
    tokens = jax.ShapeDtypeStruct((8, 16), jax.numpy.int32)
    with parallel.use_rules(mesh, parallel.rules_for(mesh_cfg)):
      jax.eval_shape(lambda p, t, d=model_def: d.merge(p)(t),
                     jax.eval_shape(model_def.init_params, jax.random.key(0)), tokens)
  used.update(a for a in CACHE_AXES if a)
  assert {'embed', 'expert', 'act_embed', 'act_expert', 'expert_batch', 'batch'} <= used
  assert used <= set(parallel.LOGICAL_AXES), used - set(parallel.LOGICAL_AXES)
  for preset in parallel.PRESETS.values():  # and the presets name only these
    assert {name for name, _ in preset} <= set(parallel.LOGICAL_AXES)
