"""Names of a package that load on first use (PEP 562 module __getattr__), so importing a
light part of the package does not start jax, flax or the data pipeline.

    __getattr__, __dir__ = lazy.names(__name__, {'Trainer': 'loop', 'train': 'loop'})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def names(package: str, defined_in: Mapping[str, str], submodules: Iterable[str] = ()
          ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """The package's __getattr__ and __dir__: a name of `defined_in` is imported from that
  submodule on first use and kept in the package; a name of `submodules` is the submodule."""
  submodules = tuple(submodules)

  def getattr_(name: str) -> object:
    if name in submodules:
      return importlib.import_module(f'{package}.{name}')
    if name in defined_in:
      value = getattr(importlib.import_module(f'{package}.{defined_in[name]}'), name)
      vars(sys.modules[package])[name] = value
      return value
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def dir_() -> list[str]:
    return sorted({*vars(sys.modules[package]), *defined_in, *submodules})

  return getattr_, dir_
