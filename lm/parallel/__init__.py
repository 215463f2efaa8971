"""Mesh construction and logical-axis sharding rules (the only place mesh axes appear)."""

from lm.parallel.mesh import (
                              MESH_AXES,
                              batch_sharding,
                              build_mesh,
                              global_batch,
                              mesh_shape,
                              num_granules,
                              replicated,
                              shardings_for,
)
from lm.parallel.presets import PRESETS, preset_rules, rules_for
from lm.parallel.report import sharding_report
from lm.parallel.rules import constrain, logical_to_spec, use_rules

__all__ = ['MESH_AXES', 'PRESETS', 'batch_sharding', 'build_mesh', 'constrain', 'global_batch',
           'logical_to_spec', 'mesh_shape', 'num_granules', 'preset_rules', 'replicated',
           'rules_for', 'sharding_report', 'shardings_for', 'use_rules']
