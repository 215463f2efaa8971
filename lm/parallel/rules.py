"""Logical axis names -> mesh axes, and the activation-sharding hook the model calls.

The model names axes logically ('batch', 'embed', 'heads', ...). The config's
`mesh.rules` say which mesh axes each name is split over. Inside `use_rules(...)`
the model's `constrain(x, axes)` calls become `with_sharding_constraint`; outside
(one device, notebooks) they do nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Sequence[str] | str | None]]

_ACTIVE: contextvars.ContextVar[tuple[Mesh, dict] | None] = contextvars.ContextVar(
    'lm_sharding_rules', default=None)


def rules_dict(rules: Rules) -> dict[str, tuple[str, ...]]:
  """Normalises config rules to {logical name: tuple of mesh axes}."""
  out = {}
  for name, axes in rules:
    if axes is None or axes == '':
      axes = ()
    elif isinstance(axes, str):
      axes = (axes,)
    out[name] = tuple(a for a in axes if a)
  return out


def logical_to_spec(axes: Sequence[str | None], rules: dict[str, tuple[str, ...]],
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec for one array; a mesh axis is used once, size-1 axes are dropped,
  and an axis whose size the mesh does not divide stays replicated."""
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    mesh_axes = []
    for a in rules.get(name, ()) if name else ():
      if a in used or (mesh is not None and mesh.shape.get(a, 1) == 1):
        continue
      mesh_axes.append(a)
    if mesh is not None and shape is not None and mesh_axes:
      size = 1
      for a in mesh_axes:
        size *= mesh.shape[a]
      if shape[i] % size:
        mesh_axes = []
    used.update(mesh_axes)
    spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
  return PartitionSpec(*spec)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `constrain` active for code traced inside this block."""
  token = _ACTIVE.set((mesh, rules_dict(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_rules() -> tuple[Mesh, dict[str, tuple[str, ...]]] | None:
  """(mesh, rules) of the enclosing `use_rules` block, or None outside one."""
  return _ACTIVE.get()


def is_split(name: str) -> bool:
  """Whether the active rules split logical axis `name` over a mesh axis longer than 1."""
  active = _ACTIVE.get()
  return active is not None and any(active[0].shape.get(a, 1) > 1 for a in active[1].get(name, ()))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Annotates an activation with logical axes (no-op without active rules)."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(axes, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
