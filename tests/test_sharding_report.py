"""The sharding report: every parameter's logical axes, placement and bytes per device."""

import jax

from configs.default import get_config
from lm import parallel
from lm.model import ModelConfig, ModelDef

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
