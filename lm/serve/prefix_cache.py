"""The prefix cache: K/V of prompt blocks already prefilled, reused by later prompts.

A prompt is cut into blocks of `block` tokens (the engine's prefill chunk). Block i is
keyed by a chained hash, sha256(key of block i-1 + the tokens of block i), so a key names
the whole prefix up to the end of its block (as vLLM's block hashes do): two prompts share
the entries of the blocks they agree on from the start, and none after their first
difference. An entry holds the block's K and V ({'k', 'v'}: [layers, 1, block, K, H]) on
the device the cache row lives on, so a hit is a copy into the row, no host transfer.

Entries are kept in least-recently-used order and the store holds at most `capacity`
blocks (the server's --prefix_cache_mb over the bytes of one block): adding one to a
full store evicts the least recently used. A hit refreshes every entry of the prefix.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence

import numpy as np

from lm.errors import InputError


def block_keys(tokens: Sequence[int], block: int) -> list[bytes]:
  """The chained keys of every full block of `tokens` (a partial last block has none)."""
  keys, parent = [], b''
  arr = np.asarray(tokens, np.int64)
  for start in range(0, len(arr) - block + 1, block):
    parent = hashlib.sha256(parent + arr[start:start + block].tobytes()).digest()
    keys.append(parent)
  return keys


class PrefixCache:
  """An LRU store of at most `capacity` blocks of `block` tokens, keyed by `block_keys`.

  hits / misses count blocks looked up (a lookup stops at its first miss; the blocks of
  the prompt after it count as misses), evictions those dropped to make room."""

  def __init__(self, *, block: int, capacity: int, block_bytes: int = 0):
    if block < 1:
      raise InputError(f'prefix cache block={block} must be >= 1')
    if capacity < 1:
      raise InputError(f'prefix cache capacity={capacity} blocks must be >= 1')
    self.block, self.capacity, self.block_bytes = block, capacity, block_bytes
    self._entries: collections.OrderedDict[bytes, dict] = collections.OrderedDict()
    self.hits = self.misses = self.evictions = 0

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, key: bytes) -> bool:
    return key in self._entries

  @property
  def bytes(self) -> int:
    return len(self._entries) * self.block_bytes

  def lookup(self, keys: Sequence[bytes]) -> list[dict]:
    """The cached blocks of the longest prefix of `keys` held here (refreshed as recent)."""
    found = []
    for key in keys:
      entry = self._entries.get(key)
      if entry is None:
        break
      self._entries.move_to_end(key)
      found.append(entry)
    self.hits += len(found)
    self.misses += len(keys) - len(found)
    return found

  def put(self, key: bytes, kv: dict) -> None:
    """Stores a block (or refreshes it, if held), evicting the least recently used."""
    if key in self._entries:
      self._entries.move_to_end(key)
      return
    while len(self._entries) >= self.capacity:
      self._entries.popitem(last=False)
      self.evictions += 1
    self._entries[key] = kv

  def clear(self) -> None:
    self._entries.clear()
