"""The device mesh built from `config.mesh`, and shardings for parameters and batches."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.parallel.rules import logical_to_spec, rules_dict

MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')
# The global batch is split over these; 'expert' carries distinct tokens too, so expert
# parallelism has tokens to exchange (all-to-all) rather than replicas.
BATCH_AXES = ('data', 'fsdp', 'expert')


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Axis sizes with a -1 filled in from the device count."""
  sizes = {a: int(mesh_cfg[a]) for a in MESH_AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  for a, s in sizes.items():
    if s == -1:
      sizes[a] = num_devices // known
  return sizes


def build_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A Mesh over all devices (or `devices`) with axes data, fsdp, tensor."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  if math.prod(shape) != len(devices):
    raise ValueError(f'mesh {sizes} needs {math.prod(shape)} devices, found {len(devices)}')
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, NotImplementedError, ValueError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def shardings_for(logical_axes, abstract, mesh: Mesh, rules) -> object:
  """NamedShardings for a pytree of arrays from a matching pytree of logical-axis tuples."""
  rules = rules_dict(rules)
  return jax.tree.map(
      lambda axes, a: NamedSharding(mesh, logical_to_spec(axes, rules, mesh, a.shape)),
      logical_axes, abstract, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, *, leading_dims: int = 0) -> NamedSharding:
  """Rows split over the batch axes; `leading_dims` unsplit axes come first (steps)."""
  return NamedSharding(mesh, PartitionSpec(*([None] * leading_dims), BATCH_AXES))


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
