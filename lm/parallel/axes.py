"""The mesh axes, the model's logical axis names and the mesh-size arithmetic (no jax).

The one definition of each: `lm.config` checks a config with them before any device is
touched, and `lm.parallel.mesh` builds the mesh with the same sizes. A mesh axis has an
ICI size (`mesh.<axis>`: devices of one granule, i.e. a TPU slice or a process) and a DCN
size (`mesh.dcn_<axis>`: granules); its length is ici * dcn. One size of each kind may be
-1 to take what the others leave.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lm.errors import ConfigError

# Mesh order; tensor innermost (fastest links). 'sequence' splits the tokens of each row
# (context parallelism: the 'seq' logical axis of the activations).
MESH_AXES = ('data', 'fsdp', 'sequence', 'expert', 'tensor')

# Every logical axis name the model, its activations and the decode cache use (lm/model,
# lm/infer/sharding.py); `mesh.rules` may only name these.
# tests/unit/parallel/test_sharding_report.py checks that the model uses no other name.
LOGICAL_AXES = (
    # parameters
    'layers', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp', 'vocab', 'norm', 'expert',
    # activations (and the decode cache)
    'batch', 'seq', 'act_embed', 'act_heads', 'act_kv_heads', 'act_mlp', 'act_vocab',
    # MoE dispatch: tokens [batch, expert, slot, ...] (lm/model/moe.py)
    'expert_batch', 'act_expert',
)

Sizes = dict[str, int]


def sizes_of(mesh_cfg: Mapping) -> tuple[Sizes, Sizes]:
  """(ICI sizes, DCN sizes) as written in a `config.mesh` section (-1s kept)."""
  return ({a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES},
          {a: int(mesh_cfg.get(f'dcn_{a}', 1)) for a in MESH_AXES})


def size_problems(ici: Sizes, dcn: Sizes) -> list[str]:
  """What is wrong with the sizes themselves, whatever the device count: sizes below 1
  other than -1, and more than one -1 of a kind."""
  problems = []
  for sizes, prefix, what in ((ici, 'mesh.', 'devices'), (dcn, 'mesh.dcn_', 'slices/processes')):
    for a, s in sizes.items():
      if s != -1 and s < 1:
        problems.append(f'{prefix}{a}={s} must be a positive size, or -1 to take the '
                        f'remaining {what}.')
    wild = [a for a, s in sizes.items() if s == -1]
    if len(wild) > 1:
      problems.append(f"more than one mesh size is -1 ({', '.join(prefix + a for a in wild)}); "
                      f'at most one axis can take the remaining {what}. Give the others '
                      'explicit sizes.')
  return problems


def solve(ici: Sizes, dcn: Sizes, num_devices: int, num_granules: int | None = None
          ) -> tuple[Sizes, Sizes, list[str]]:
  """(ICI sizes, DCN sizes, problems): the -1s filled in for `num_devices` devices in
  `num_granules` granules (when known), and every reason the sizes do not fit them, each
  naming the mesh.* keys and the fix. The sizes are only meaningful without problems."""
  ici, dcn = dict(ici), dict(dcn)
  problems = size_problems(ici, dcn)
  if problems:
    return ici, dcn, problems
  ici_wild = [a for a, s in ici.items() if s == -1]
  dcn_wild = [a for a, s in dcn.items() if s == -1]
  if ici_wild and dcn_wild:
    if num_granules is None:
      return ici, dcn, [
          f'mesh.{ici_wild[0]}=-1 and mesh.dcn_{dcn_wild[0]}=-1: with no slice/process count '
          f'to go by, give mesh.dcn_{dcn_wild[0]} explicitly (the number of slices/processes).']
    dcn_rest = math.prod(s for s in dcn.values() if s != -1)
    if num_granules % dcn_rest:
      return ici, dcn, [
          f'mesh.dcn_{dcn_wild[0]}=-1 cannot take the remaining {num_granules} '
          f'slices/processes: the other mesh.dcn_* sizes multiply to {dcn_rest}.']
    dcn[dcn_wild[0]] = num_granules // dcn_rest
    dcn_wild = []
  names = ', '.join([f'mesh.{a}={s}' for a, s in ici.items()]
                    + [f'mesh.dcn_{a}={s}' for a, s in dcn.items() if s != 1])
  rest = math.prod(s for s in [*ici.values(), *dcn.values()] if s != -1)
  wild = [f'mesh.{a}' for a in ici_wild] + [f'mesh.dcn_{a}' for a in dcn_wild]
  if wild:
    if num_devices % rest:
      return ici, dcn, [
          f'{wild[0]}=-1 cannot take the remaining devices: {num_devices} devices are not '
          f'divisible by the product of the other mesh sizes ({names}: {rest}). Make that '
          f'product divide {num_devices}.']
    for sizes, axes in ((ici, ici_wild), (dcn, dcn_wild)):
      for a in axes:
        sizes[a] = num_devices // rest
  elif rest != num_devices:
    product = '*'.join(str(s) for s in [*ici.values(), *(s for s in dcn.values() if s != 1)])
    return ici, dcn, [
        f'the mesh has {product} = {rest} devices ({names}) but this run has {num_devices}; '
        f'make the product equal {num_devices}, e.g. --config.mesh.data=-1 to give the data '
        'axis the remaining devices.']
  if num_granules is not None and math.prod(dcn.values()) not in (1, num_granules):
    return ici, dcn, [
        f'the mesh.dcn_* sizes ({names}) split {math.prod(dcn.values())} slices/processes but '
        f'this run has {num_granules}; make their product {num_granules}, or 1 for one slice.']
  return ici, dcn, []


def mesh_sizes(mesh_cfg: Mapping, num_devices: int, num_granules: int | None = None
               ) -> tuple[Sizes, Sizes]:
  """(ICI sizes, DCN sizes) per mesh axis of a `config.mesh` section with the -1s filled in;
  ConfigError when they do not fit `num_devices` devices in `num_granules` granules."""
  ici, dcn, problems = solve(*sizes_of(mesh_cfg), num_devices, num_granules)
  if problems:
    raise ConfigError(problems)
  return ici, dcn


def mesh_shape(mesh_cfg: Mapping, num_devices: int, num_granules: int | None = None
               ) -> dict[str, int]:
  """Mesh axis lengths (ICI x DCN) with -1s filled in from the device count."""
  ici, dcn = mesh_sizes(mesh_cfg, num_devices, num_granules)
  return {a: ici[a] * dcn[a] for a in MESH_AXES}
