"""The Tokenizer interface every kind implements (sentencepiece, byte, char).

Ids 0..vocab_size-1; `pad_id` is 0 everywhere. `encode` adds no bos/eos (the packer
does). `decode` drops special ids and ids outside the vocabulary (a model's padded
vocabulary may produce them). `byte_lengths()[i]` is the number of UTF-8 bytes id i
decodes to, so bits-per-byte = sum(loss) / (ln 2 * sum(byte_lengths[targets])).
"""

import abc
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

META_FILE = 'tokenizer.json'


class Tokenizer(abc.ABC):
  """Text <-> ids; saved to and loaded from a directory."""

  kind: str = ''
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids (specials included)."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without bos/eos."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`; special and out-of-range ids are dropped."""

  @abc.abstractmethod
  def byte_lengths(self) -> np.ndarray:
    """[vocab_size] int32: UTF-8 bytes each id decodes to (0 for pad/bos/eos)."""

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """`encode` of many texts as int32 arrays (kinds override this with a faster path)."""
    return [np.asarray(self.encode(t), dtype=np.int32) for t in texts]

  @abc.abstractmethod
  def _save_files(self, directory: pathlib.Path) -> dict[str, Any]:
    """Writes the kind's files; returns extra metadata for tokenizer.json."""

  def save(self, directory: pathlib.Path) -> None:
    meta = {'kind': self.kind, 'vocab_size': self.vocab_size, **self._save_files(directory)}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1) + '\n')

  def _valid(self, ids: Sequence[int]) -> list[int]:
    """ids as Python ints, without specials and out-of-range ids."""
    n = self.vocab_size
    special = (self.pad_id, self.bos_id, self.eos_id)
    return [int(i) for i in ids if 0 <= int(i) < n and int(i) not in special]
