"""Logical-axis rule presets, as plain data (no jax).

`mesh.preset` picks how the model is split over the mesh: a preset maps the model's
logical axis names (lm.parallel.axes.LOGICAL_AXES) to mesh axes, and `mesh.rules`
overrides single names on top of it. This module imports no jax, so `lm.config` can check
a config (which mesh axes split the batch, the heads, the width) before jax starts.
"""

from __future__ import annotations

from collections.abc import Sequence

Rule = tuple[str, tuple[str, ...]]

_TENSOR_SPLIT: tuple[Rule, ...] = tuple(
    (name, ('tensor',)) for name in ('heads', 'kv_heads', 'mlp', 'vocab', 'act_heads',
                                     'act_kv_heads', 'act_mlp', 'act_vocab'))

# MoE (lm/model/moe.py): expert weights' leading dim, and dispatched tokens [batch, expert,
# slot, ...] whose batch dim leaves the expert axis as their expert dim takes it (all-to-all).
_EXPERT_SPLIT: tuple[Rule, ...] = (('expert', ('expert',)), ('act_expert', ('expert',)),
                                   ('expert_batch', ('data', 'fsdp')))

# Context parallelism: the activations' token axis over 'sequence' (a no-op at size 1).
_SEQUENCE_SPLIT: tuple[Rule, ...] = (('seq', ('sequence',)),)

PRESETS: dict[str, tuple[Rule, ...]] = {
    # Batch over data, fsdp and expert; parameters split over fsdp (their 'embed' dim) and,
    # Megatron-style, over tensor (heads, MLP units, vocabulary); experts over expert.
    'fsdp_tensor': (('batch', ('data', 'fsdp', 'expert')), ('embed', ('fsdp',)),
                    *_EXPERT_SPLIT, *_TENSOR_SPLIT, *_SEQUENCE_SPLIT),
    # Pure data parallelism: every mesh axis splits the batch, every parameter is replicated.
    'data': (('batch', ('data', 'fsdp', 'expert', 'tensor')), *_SEQUENCE_SPLIT),
    # ZeRO-3: parameters and optimizer state split over fsdp, gathered per layer; no tensor.
    'fsdp': (('batch', ('data', 'fsdp', 'expert')), ('embed', ('fsdp',)), *_EXPERT_SPLIT,
             *_SEQUENCE_SPLIT),
    # Megatron-style tensor parallelism plus data parallelism (fsdp acts as a data axis).
    'tensor': (('batch', ('data', 'fsdp', 'expert')), *_EXPERT_SPLIT, *_TENSOR_SPLIT,
               *_SEQUENCE_SPLIT),
}


def _axes(axes) -> tuple[str, ...]:
  if axes is None or axes == '':
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(a for a in axes if a)


def preset_rules(preset: str, overrides: Sequence = ()) -> tuple[Rule, ...]:
  """The preset's rules with each override (logical name, mesh axes) replacing or adding
  that name's rule; '' / () / None map a name to no mesh axis (replicated)."""
  if preset not in PRESETS:
    raise ValueError(f'unknown mesh.preset {preset!r}; use one of {", ".join(PRESETS)}')
  rules = {name: axes for name, axes in PRESETS[preset]}
  for name, axes in overrides:
    rules[name] = _axes(axes)
  return tuple(rules.items())


def rules_for(mesh_cfg) -> tuple[Rule, ...]:
  """The effective logical-axis rules of a `config.mesh` section (preset + mesh.rules)."""
  return preset_rules(mesh_cfg.preset, mesh_cfg.rules)
