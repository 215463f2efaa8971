"""The device mesh built from `config.mesh`, and shardings for parameters and batches."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.errors import ConfigError
from lm.parallel.axes import MESH_AXES, sizes_of, solve
from lm.parallel.rules import logical_to_spec, rules_dict

BATCH_AXES = ('data', 'fsdp', 'expert')  # the batch split when no rules are given


def num_granules(devices=None) -> int:
  """How many granules the devices form: TPU slices where devices know their slice,
  else processes (hosts). DCN mesh sizes split the granules."""
  devices = jax.devices() if devices is None else devices
  if _by_slice(devices):
    return len({d.slice_index for d in devices})
  return len({d.process_index for d in devices})


def _by_slice(devices) -> bool:
  """TPU devices know their slice (multislice); other platforms' granules are processes."""
  return all(d.platform == 'tpu' and getattr(d, 'slice_index', None) is not None
             for d in devices)


def build_mesh(mesh_cfg, devices=None) -> Mesh:
  """A Mesh over all devices (or `devices`) with axes data, fsdp, sequence, expert, tensor.

  With every `mesh.dcn_*` = 1 the devices are laid out by `mesh_utils.create_device_mesh`
  (topology-aware on TPU/GPU); with a DCN size > 1 by `create_hybrid_device_mesh`, so
  each DCN axis crosses slices (TPU) or processes (elsewhere) and ICI axes stay inside one.
  """
  devices = jax.devices() if devices is None else list(devices)
  granules = num_granules(devices)
  ici, dcn, problems = solve(*sizes_of(mesh_cfg), len(devices), granules)
  if any(s < 1 for s in [*ici.values(), *dcn.values()]):  # a -1 that could not be filled
    raise ConfigError(problems)
  # The sizes are filled: what can still be wrong is said in terms of the devices found.
  shape = tuple(ici[a] * dcn[a] for a in MESH_AXES)
  if math.prod(shape) != len(devices):
    sizes = ', '.join(f'{a}={ici[a]}x{dcn[a]}' for a in MESH_AXES)
    raise ConfigError(f'the mesh (ici x dcn: {sizes}) needs {math.prod(shape)} devices, found '
                      f'{len(devices)}; set one of mesh.data/fsdp/sequence/expert/tensor to -1.')
  dcn_shape = tuple(dcn[a] for a in MESH_AXES)
  if math.prod(dcn_shape) == 1:
    try:
      grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, NotImplementedError, ValueError):
      grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)
  if math.prod(dcn_shape) != granules:
    names = ', '.join(f'mesh.dcn_{a}={dcn[a]}' for a in MESH_AXES if dcn[a] != 1)
    raise ConfigError(
        f'{names} split {math.prod(dcn_shape)} slices/processes, but the devices form '
        f'{granules}; make the product of the mesh.dcn_* sizes equal {granules} (or set '
        'them all to 1 for one slice).')
  try:
    grid = mesh_utils.create_hybrid_device_mesh(
        tuple(ici[a] for a in MESH_AXES), dcn_shape, devices,
        process_is_granule=not _by_slice(devices))
  except (AssertionError, ValueError) as e:
    raise ConfigError(f'cannot lay out the hybrid mesh (ici {ici}, dcn {dcn}): {e}') from e
  return Mesh(grid, MESH_AXES)


def shardings_for(logical_axes, abstract, mesh: Mesh, rules) -> object:
  """NamedShardings for a pytree of arrays from a matching pytree of logical-axis tuples."""
  rules = rules_dict(rules)
  return jax.tree.map(
      lambda axes, a: NamedSharding(mesh, logical_to_spec(axes, rules, mesh, a.shape)),
      logical_axes, abstract, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, *, leading_dims: int = 0, rules=None) -> NamedSharding:
  """Rows split over the batch axes (the rules' 'batch' axes, else BATCH_AXES);
  `leading_dims` unsplit axes come first (steps)."""
  axes = BATCH_AXES if rules is None else rules_dict(rules).get('batch', ())
  axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1) or None
  return NamedSharding(mesh, PartitionSpec(*([None] * leading_dims), axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding, *,
                 batch_axis: int = 0) -> dict[str, jax.Array]:
  """Global jax.Arrays from this process's rows (multi-host safe)."""
  nproc = jax.process_count()
  def put(x):
    shape = list(x.shape)
    shape[batch_axis] *= nproc
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))
  return {k: put(v) for k, v in local_batch.items()}
