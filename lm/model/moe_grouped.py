"""Dropless (or capacity-limited) experts as a grouped matmul over expert-sorted rows.

Shapes: N tokens (rows of the batch flattened), K experts per token, A = N * K token-expert
assignments, R rows given to the experts (A, or the rows received from other devices),
G groups (experts on this device), D width, F expert hidden size, P padded rows.

The expert compute grows with the rows actually routed (tokens x K), not with T * E * C
as the one-hot dispatch of lm/model/moe.py does. Rows are ordered by expert with a stable
sort; then one of two kernels runs every expert over its own rows:

- 'ragged_dot' (GPU, TPU): `jax.lax.ragged_dot` on the sorted rows, which XLA lowers to
  its grouped-matmul instruction on those backends;
- 'tiled' (CPU, where jax lowers ragged_dot to a dense matmul over every group): each
  expert's rows are padded to a multiple of a tile, every tile belongs to one expert, and
  one batched matmul runs all tiles against their experts' weights (at most G tiles of
  padding beyond the rows).

Expert parallelism (`expert_parallel`): under shard_map each device routes its own tokens,
sends each assignment's row to the device that owns its expert with one padded
all-to-all on the expert mesh axis (XLA:CPU has no ragged all-to-all), runs its own
experts over what it received, and a second all-to-all returns the results.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from lm.parallel.rules import active_rules, logical_to_spec


class ExpertWeights(NamedTuple):
  """Stacked expert weights: up [G, D, F * U] (U = 2 for SwiGLU's gate and up, else 1),
  down [G, F, D], optional biases up_bias [G, F * U], down_bias [G, D]."""

  up: jax.Array
  down: jax.Array
  up_bias: jax.Array | None
  down_bias: jax.Array | None


def kernel_for_backend() -> str:
  return 'tiled' if jax.default_backend() == 'cpu' else 'ragged_dot'


def tile_rows(rows: int, groups: int) -> int:
  """Tile height: a power of two in [8, 128] near rows / (4 groups), so the padding (under
  one tile per group) stays a small part of the rows."""
  return int(min(128, max(8, 2 ** math.floor(math.log2(max(rows // (4 * groups), 1))))))


def _activation(h: jax.Array, gated: bool) -> jax.Array:
  if gated:
    h = h.reshape(*h.shape[:-1], -1, 2)
    return jax.nn.silu(h[..., 0]) * h[..., 1]
  return jax.nn.gelu(h, approximate=True)


def _sort(ids_R: jax.Array, groups: int):
  """(order [R], sorted position of each row [R], group sizes [G], group starts [G]) for
  ids in [0, G]; id G (dropped or padding) sorts last and is in no group."""
  order_R = jnp.argsort(ids_R, stable=True)
  pos_R = jnp.zeros_like(order_R).at[order_R].set(jnp.arange(ids_R.shape[0], dtype=order_R.dtype))
  sizes_G = jnp.bincount(ids_R, length=groups + 1)[:groups].astype(jnp.int32)
  starts_G = jnp.cumsum(sizes_G) - sizes_G
  return order_R, pos_R, sizes_G, starts_G


def _ragged(x_RD, ids_R, w: ExpertWeights, gated: bool):
  groups = w.up.shape[0]
  order_R, pos_R, sizes_G, _ = _sort(ids_R, groups)
  valid_R = ids_R < groups
  xs_RD = x_RD[order_R]
  ids_sorted_R = jnp.minimum(ids_R[order_R], groups - 1)
  h_RX = jax.lax.ragged_dot(xs_RD, w.up, sizes_G)
  if w.up_bias is not None:
    h_RX = h_RX + w.up_bias[ids_sorted_R]
  ys_RD = jax.lax.ragged_dot(_activation(h_RX, gated), w.down, sizes_G)
  if w.down_bias is not None:
    ys_RD = ys_RD + w.down_bias[ids_sorted_R]
  return jnp.where(valid_R[:, None], ys_RD[pos_R], 0)


def _tiled(x_RD, ids_R, w: ExpertWeights, gated: bool):
  groups = w.up.shape[0]
  rows = x_RD.shape[0]
  tile = tile_rows(rows, groups)
  num_tiles = -(-(rows + groups * (tile - 1)) // tile)  # >= sum_g ceil(size_g / tile)
  _, pos_R, sizes_G, starts_G = _sort(ids_R, groups)
  padded_G = -(-sizes_G // tile) * tile
  pad_starts_G = jnp.cumsum(padded_G) - padded_G
  valid_R = ids_R < groups
  g_R = jnp.minimum(ids_R, groups - 1)
  # A row's padded slot: its group's padded start plus its rank inside the group.
  slot_R = jnp.where(valid_R, pad_starts_G[g_R] + pos_R - starts_G[g_R], num_tiles * tile)
  src_P = jnp.zeros(num_tiles * tile, jnp.int32).at[slot_R].set(
      jnp.arange(rows, dtype=jnp.int32), mode='drop')
  used_P = jnp.zeros(num_tiles * tile, bool).at[slot_R].set(True, mode='drop')
  x_PMD = jnp.where(used_P[:, None], x_RD[src_P], 0).reshape(num_tiles, tile, -1)
  # The expert of each tile: the group whose padded range holds the tile's first row.
  tile_g = jnp.searchsorted(jnp.cumsum(padded_G), jnp.arange(num_tiles) * tile, side='right')
  tile_g = jnp.minimum(tile_g, groups - 1)  # tiles past the last group are unused
  h_PMX = jnp.einsum('PMD,PDX->PMX', x_PMD, w.up[tile_g])
  if w.up_bias is not None:
    h_PMX = h_PMX + w.up_bias[tile_g][:, None]
  y_PMD = jnp.einsum('PMF,PFD->PMD', _activation(h_PMX, gated), w.down[tile_g])
  if w.down_bias is not None:
    y_PMD = y_PMD + w.down_bias[tile_g][:, None]
  y_RD = y_PMD.reshape(num_tiles * tile, -1).at[slot_R].get(mode='fill', fill_value=0)
  return jnp.where(valid_R[:, None], y_RD, 0)


def expert_rows(x_RD: jax.Array, ids_R: jax.Array, w: ExpertWeights, *, gated: bool,
                kernel: str) -> jax.Array:
  """Each row through expert ids_R (of w's G experts; id G: no expert, output 0)."""
  return (_tiled if kernel == 'tiled' else _ragged)(x_RD, ids_R, w, gated)


def _local(x_ND, experts_NK, gates_NK, kept_NK, w: ExpertWeights, *, gated, kernel):
  """Every assignment on this device's experts (all of them): the combined [N, D]."""
  n, k = experts_NK.shape
  groups = w.up.shape[0]
  ids_A = jnp.where(kept_NK, experts_NK, groups).reshape(-1)
  x_AD = jnp.repeat(x_ND, k, axis=0)
  y_NKD = expert_rows(x_AD, ids_A, w, gated=gated, kernel=kernel).reshape(n, k, -1)
  return jnp.einsum('NKD,NK->ND', y_NKD, gates_NK.astype(y_NKD.dtype))


def _exchange(x_ND, experts_NK, gates_NK, kept_NK, w: ExpertWeights, *, axis, size,
              buffer, gated, kernel):
  """`_local` with the experts split over mesh axis `axis` (`size` devices, G local
  experts each): rows go to their expert's device and back by all-to-all. `buffer`: rows
  each device may send to each other device (static)."""
  n, k = experts_NK.shape
  groups = w.up.shape[0]  # experts on this device
  kept_A = kept_NK.reshape(-1)
  e_A = experts_NK.reshape(-1)
  dest_A = jnp.where(kept_A, e_A // groups, size)
  order_A, pos_A, count_X, start_X = _sort(dest_A, size)
  # Send buffer [X, S]: row j for device d is its j-th assignment (in expert order).
  j_S = jnp.arange(buffer)
  src_XS = jnp.minimum(start_X[:, None] + j_S, n * k - 1)
  sent_XS = j_S < count_X[:, None]
  a_XS = order_A[src_XS]
  x_XSD = jnp.where(sent_XS[..., None], x_ND[a_XS // k], 0)
  local_XS = jnp.where(sent_XS, e_A[a_XS] % groups, groups)
  x_XSD = jax.lax.all_to_all(x_XSD, axis, 0, 0, tiled=True)
  local_XS = jax.lax.all_to_all(local_XS, axis, 0, 0, tiled=True)
  y_RD = expert_rows(x_XSD.reshape(size * buffer, -1), local_XS.reshape(-1), w, gated=gated,
                     kernel=kernel)
  y_XSD = jax.lax.all_to_all(y_RD.reshape(size, buffer, -1), axis, 0, 0, tiled=True)
  # Assignment a went to device dest_a as row (its sorted position - that device's start).
  rank_A = pos_A - start_X[jnp.minimum(dest_A, size - 1)]
  y_AD = y_XSD.at[dest_A, rank_A].get(mode='fill', fill_value=0)
  y_NKD = jnp.where(kept_A[:, None], y_AD, 0).reshape(n, k, -1)
  return jnp.einsum('NKD,NK->ND', y_NKD, gates_NK.astype(y_NKD.dtype))


def _mesh_axes(names, rules, mesh, size_of_dim: int) -> tuple[str, ...]:
  spec = logical_to_spec((names,), rules, mesh, (size_of_dim,))[0]
  if spec is None:
    return ()
  return (spec,) if isinstance(spec, str) else tuple(spec)


def grouped_moe(x_BTD, experts_BTK, gates_BTK, kept_BTK, w: ExpertWeights, *, gated: bool,
                capacity: int, kernel: str | None = None) -> jax.Array:
  """The experts' combined output [B, T, D] for kept assignments (gates 0 elsewhere).

  Without active sharding rules this is one grouped matmul over all assignments. Under
  rules (lm.parallel.use_rules) it runs per device under shard_map: the rows split as the
  'batch' rule says, the experts' weights over the 'expert' rule's mesh axes, and rows
  move to their experts by all-to-all. `capacity`: the most tokens of one row an expert
  takes (the sequence length when dropless), which bounds the exchange's static buffer.
  """
  kernel = kernel or kernel_for_backend()
  b, t, d = x_BTD.shape
  k = experts_BTK.shape[-1]
  active = active_rules()

  def run(x_BTD, experts_BTK, gates_BTK, kept_BTK, w, axis=None, size=1):
    bl = x_BTD.shape[0]
    args = (x_BTD.reshape(bl * t, d), experts_BTK.reshape(bl * t, k),
            gates_BTK.reshape(bl * t, k), kept_BTK.reshape(bl * t, k), w)
    if size == 1:
      y = _local(*args, gated=gated, kernel=kernel)
    else:
      # A row sends at most T * K rows in all, and `capacity` to each of G local experts.
      buffer = bl * min(t * k, w.up.shape[0] * capacity)
      y = _exchange(*args, axis=axis, size=size, buffer=buffer, gated=gated, kernel=kernel)
    return y.reshape(bl, t, d)

  if active is None:
    return run(x_BTD, experts_BTK, gates_BTK, kept_BTK, w)
  mesh, rules = active
  batch_axes = _mesh_axes('batch', rules, mesh, b)
  expert_axes = _mesh_axes('expert', rules, mesh, w.up.shape[0])
  size = math.prod(mesh.shape[a] for a in expert_axes)
  row_spec = PartitionSpec(batch_axes or None)
  w_spec = ExpertWeights(*(None if a is None else PartitionSpec(expert_axes or None)
                           for a in w))
  axis = expert_axes if len(expert_axes) != 1 else expert_axes[0]
  body = lambda *a: run(*a, axis=axis, size=size)  # noqa: E731
  return jax.shard_map(body, mesh=mesh, in_specs=(row_spec,) * 4 + (w_spec,),
                       out_specs=row_spec, check_vma=False)(
                           x_BTD, experts_BTK, gates_BTK, kept_BTK, w)
