"""The mesh section: device mesh sizes, the sharding preset and rule overrides."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from lm.config.fields import Section
from lm.config.sections.base import frozen
from lm.parallel import axes, presets


@frozen
class Mesh(Section):
  data: int
  fsdp: int
  sequence: int
  expert: int
  tensor: int
  dcn_data: int
  dcn_fsdp: int
  dcn_sequence: int
  dcn_expert: int
  dcn_tensor: int
  preset: Literal['fsdp_tensor', 'data', 'fsdp', 'tensor']  # lm/parallel/presets.PRESETS
  rules: tuple[tuple[str, tuple[str, ...] | str], ...]

  @property
  def ici(self) -> dict[str, int]:
    return {a: getattr(self, a) for a in axes.MESH_AXES}

  @property
  def dcn(self) -> dict[str, int]:
    return {a: getattr(self, f'dcn_{a}') for a in axes.MESH_AXES}

  def problems(self) -> Iterator[str]:
    yield from axes.size_problems(self.ici, self.dcn)
    yield from self.rule_problems()

  def rule_problems(self) -> Iterator[str]:
    seen: set[str] = set()
    for i, rule in enumerate(self.rules):
      where = f'mesh.rules[{i}]'
      if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
        yield (f"{where}={rule!r} must be a pair (logical axis name, mesh axes), e.g. "
               "('embed', ('fsdp',)).")
        continue
      name, mesh_axes = rule
      if name in seen:
        yield f"{where} repeats the logical axis '{name}'; give each logical axis one rule."
      seen.add(name)
      if name not in axes.LOGICAL_AXES:
        yield (f"{where} names the logical axis '{name}', which the model does not have; use "
               f"one of {', '.join(axes.LOGICAL_AXES)}.")
      if mesh_axes is None or isinstance(mesh_axes, str):
        mesh_axes = (mesh_axes,) if mesh_axes else ()
      if not isinstance(mesh_axes, tuple) or not all(isinstance(a, str) for a in mesh_axes):
        yield (f'{where} maps {name!r} to {rule[1]!r}; mesh axes must be a tuple of names from '
               f"{axes.MESH_AXES} ('' or () for replicated).")
        continue
      unknown = [a for a in mesh_axes if a and a not in axes.MESH_AXES]
      if unknown:
        yield (f"{where} maps '{name}' to unknown mesh axes {unknown}; use names from "
               f'{axes.MESH_AXES}.')
      named = [a for a in mesh_axes if a]
      if len(set(named)) != len(named):
        yield f"{where} uses a mesh axis twice for '{name}': {tuple(mesh_axes)}."

  def logical_rules(self) -> dict[str, tuple[str, ...]]:
    """The preset's rules with mesh.rules on top (the preset alone where a rule is bad)."""
    ok = not any(self.rule_problems())
    return dict(presets.preset_rules(self.preset, self.rules if ok else ()))
