"""Byte-level tokenizer: the 256 byte values after pad/bos/eos. Nothing to train."""

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm.data.tokenizers.base import Tokenizer

OFFSET = 3  # pad=0, bos=1, eos=2, byte b -> b + 3


class ByteTokenizer(Tokenizer):
  kind = 'byte'

  @property
  def vocab_size(self) -> int:
    return OFFSET + 256

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0].tolist()

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) + OFFSET for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i - OFFSET for i in self._valid(ids)).decode('utf-8', errors='replace')

  def byte_lengths(self) -> np.ndarray:
    lengths_V = np.ones(self.vocab_size, np.int32)
    lengths_V[:OFFSET] = 0
    return lengths_V

  def _save_files(self, directory: pathlib.Path) -> dict[str, Any]:
    return {}

  @classmethod
  def load(cls, directory: pathlib.Path) -> 'ByteTokenizer':
    del directory
    return cls()
