"""Mesh construction and logical-axis sharding rules (the only place mesh axes appear).

`axes` (mesh axes, logical axis names, mesh-size arithmetic) and `presets` (rule presets)
are plain data without jax: `lm.config` checks a config with them before any device is
touched. The jax-backed names below (mesh, shardings, rules, report) are loaded on first
use, so that importing `lm.parallel.axes` does not start jax.
"""

from lm import lazy
from lm.parallel.axes import LOGICAL_AXES, MESH_AXES, mesh_shape
from lm.parallel.presets import PRESETS, preset_rules, rules_for

# name -> the module of this package that defines it (imports jax)
_JAX_BACKED = {
    'batch_sharding': 'mesh', 'build_mesh': 'mesh', 'global_batch': 'mesh',
    'num_granules': 'mesh', 'replicated': 'mesh', 'shardings_for': 'mesh',
    'constrain': 'rules', 'logical_to_spec': 'rules', 'use_rules': 'rules',
    'sharding_report': 'report',
}
_SUBMODULES = ('mesh', 'rules', 'report', 'distributed')

__all__ = ['LOGICAL_AXES', 'MESH_AXES', 'PRESETS', 'batch_sharding', 'build_mesh', 'constrain',
           'global_batch', 'logical_to_spec', 'mesh_shape', 'num_granules', 'preset_rules',
           'replicated', 'rules_for', 'sharding_report', 'shardings_for', 'use_rules']


__getattr__, __dir__ = lazy.names(__name__, _JAX_BACKED, _SUBMODULES)
