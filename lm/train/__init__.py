"""Training: optimizer, train state, jit'd steps and the loop (`train(config, workdir)`).

The loop's names load on first use, so that a light submodule (metrics, timing) can be
imported without jax, flax and the data pipeline.
"""

import importlib

_FROM_LOOP = ('Trainer', 'TrainingDiverged', 'train')

__all__ = ['Trainer', 'TrainingDiverged', 'train']


def __getattr__(name: str):
  if name in _FROM_LOOP:
    value = getattr(importlib.import_module(f'{__name__}.loop'), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted({*globals(), *_FROM_LOOP})
