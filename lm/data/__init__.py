"""Data pipeline: sources -> TFDS ArrayRecord documents -> tokenizer -> packed rows -> Grain.

    prepared = prepare(config.data, seq_len=..., log=print)
    it = prepared.train_iterator(batch_size=..., seed=..., process_index=..., process_count=...)

`prepare` and `PreparedData` (lm/data/prepare.py: Grain, TFDS, jax) load on first use, so
that importing a light submodule (cache, tokenizers, errors) does not start them.
"""

import importlib
import sys
import types

from lm.data.errors import DataError

_FROM_PREPARE = ('PreparedData', 'prepare')

__all__ = ['DataError', 'PreparedData', 'prepare']


class _Package(types.ModuleType):
  def __setattr__(self, name: str, value) -> None:
    # Loading the submodule lm.data.prepare binds it here by name; `prepare` stays the function.
    if name == 'prepare' and isinstance(value, types.ModuleType):
      return
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
  if name in _FROM_PREPARE:
    value = getattr(importlib.import_module(f'{__name__}.prepare'), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted({*globals(), *_FROM_PREPARE})
