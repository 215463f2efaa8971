"""Character tokenizer: the sorted set of characters of the training split.

Characters never seen in training map to `unk_id` and decode to U+FFFD.
"""

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm.data.tokenizers.base import Tokenizer

VOCAB_FILE = 'chars.json'
UNK_ID = 3
FIRST_CHAR_ID = 4  # pad=0, bos=1, eos=2, unk=3


class CharTokenizer(Tokenizer):
  kind = 'char'
  unk_id = UNK_ID

  def __init__(self, chars: Sequence[str]):
    self._chars = list(chars)
    self._index = {c: i + FIRST_CHAR_ID for i, c in enumerate(self._chars)}
    self._strings = ['', '', '', '\ufffd'] + self._chars

  @classmethod
  def train(cls, texts: Sequence[str]) -> 'CharTokenizer':
    chars: set[str] = set()
    for t in texts:
      chars.update(t)
    return cls(sorted(chars))

  @property
  def vocab_size(self) -> int:
    return FIRST_CHAR_ID + len(self._chars)

  def encode(self, text: str) -> list[int]:
    get = self._index.get
    return [get(c, UNK_ID) for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    return ''.join(self._strings[i] for i in self._valid(ids))

  def byte_lengths(self) -> np.ndarray:
    return np.array([len(s.encode('utf-8')) for s in self._strings], np.int32)

  def _save_files(self, directory: pathlib.Path) -> dict[str, Any]:
    (directory / VOCAB_FILE).write_text(json.dumps(self._chars) + '\n')
    return {'file': VOCAB_FILE}

  @classmethod
  def load(cls, directory: pathlib.Path) -> 'CharTokenizer':
    return cls(json.loads((directory / VOCAB_FILE).read_text()))
