"""A printable sharding report: every parameter's logical axes, mesh placement and bytes."""

from __future__ import annotations

import math

import jax
from jax.sharding import NamedSharding


def _bytes_per_device(shape: tuple[int, ...], itemsize: int, sharding: NamedSharding) -> int:
  shard = sharding.shard_shape(shape)
  return math.prod(shard) * itemsize


def sharding_report(logical_axes, abstract_params, shardings) -> tuple[str, dict[str, int]]:
  """(a table of every parameter, totals) for parameter pytrees of matching structure.

  Totals: 'bytes' (all parameters once) and 'bytes_per_device' (the most any device holds).
  """
  rows, total, per_device = [], 0, 0
  flat_axes = jax.tree_util.tree_leaves_with_path(
      logical_axes, is_leaf=lambda x: isinstance(x, tuple))
  flat_params = jax.tree.leaves(abstract_params)
  flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, axes), param, sharding in zip(flat_axes, flat_params, flat_shardings, strict=True):
    size = math.prod(param.shape) * param.dtype.itemsize
    local = _bytes_per_device(param.shape, param.dtype.itemsize, sharding)
    total, per_device = total + size, per_device + local
    name = '.'.join(str(getattr(k, 'key', k)) for k in path)
    rows.append((name, str(tuple(param.shape)), str(tuple(axes)), str(sharding.spec),
                 f'{size:,}', f'{local:,}'))
  header = ('parameter', 'shape', 'logical axes', 'mesh placement', 'bytes', 'bytes/device')
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

  def line(r):
    return '  '.join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

  table = '\n'.join([line(header), line(tuple('-' * w for w in widths)), *map(line, rows),
                     f'total: {total:,} bytes of parameters, {per_device:,} per device '
                     f'({total / max(per_device, 1):.1f}x split)'])
  return table, {'bytes': total, 'bytes_per_device': per_device}
