"""Data pipeline: sources -> TFDS ArrayRecord documents -> tokenizer -> packed rows -> Grain.

    prepared = prepare(config.data, seq_len=..., log=print)
    it = prepared.train_iterator(batch_size=..., seed=..., process_index=..., process_count=...)

`prepare` and `PreparedData` (lm/data/prepare.py: Grain, TFDS, jax) load on first use, so
that importing a light submodule (cache, tokenizers, errors) does not start them.
"""

import sys
import types

from lm import lazy
from lm.data.errors import DataError

__all__ = ['DataError', 'PreparedData', 'prepare']


class _Package(types.ModuleType):
  def __setattr__(self, name: str, value) -> None:
    # Loading the submodule lm.data.prepare binds it here by name; `prepare` stays the function.
    if name == 'prepare' and isinstance(value, types.ModuleType):
      return
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__getattr__, __dir__ = lazy.names(__name__, {'PreparedData': 'prepare', 'prepare': 'prepare'})
