"""Grain pipelines over the packed rows: the shuffled, sharded training stream and
the fixed evaluation batches.

Multi-host contract: the global stream is one seeded shuffle of the rows, repeated
forever with a different shuffle each epoch; process p of P takes elements p, p+P,
p+2P, ... and batches them, so the union over processes of their batch b is the
single-process batch b of size P * B.
"""

import hashlib
import pathlib
from typing import Any

import grain
import numpy as np

from lm.data import packing
from lm.data.errors import DataError

_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def _rows(path: pathlib.Path) -> grain.MapDataset:
  return grain.MapDataset.source(grain.sources.ArrayRecordDataSource([str(path)]))


def _check_sharding(batch_size: int, process_index: int, process_count: int) -> None:
  if batch_size < 1:
    raise DataError(f'batch_size={batch_size} must be >= 1 (per-process rows)')
  if not 0 <= process_index < process_count:
    raise DataError(f'process_index={process_index} must be in [0, process_count={process_count})')


def shuffle_seed(seed: int) -> int:
  """Grain's per-epoch seed is seed + epoch; hashing keeps runs with seeds s and s+1
  from seeing the same orders one epoch apart."""
  digest = hashlib.sha256(f'lm.data.train/{int(seed)}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little')


class TrainIterator:
  """Infinite iterator of training batches with JSON-serialisable, checked state."""

  def __init__(self, path: pathlib.Path, *, batch_size: int, seed: int,
               process_index: int, process_count: int):
    _check_sharding(batch_size, process_index, process_count)
    rows = _rows(path)
    self._num_rows = len(rows)
    dataset = (rows.shuffle(seed=shuffle_seed(seed)).repeat()
               [process_index::process_count]
               .map(packing.parse_row)
               .batch(batch_size, drop_remainder=True)
               .map(packing.rows_to_batch))
    self._iterator = dataset.to_iter_dataset(_READ_OPTIONS).__iter__()
    # What a saved state is only valid for (process_index is not in it: every process
    # is at the same step, so any process's state restores any other).
    self._pipeline = {'seed': int(seed), 'batch_size': int(batch_size),
                      'process_count': int(process_count), 'rows': self._num_rows}

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    return {'pipeline': dict(self._pipeline), 'grain': self._iterator.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('pipeline') != self._pipeline:
      raise DataError(f'data iterator state is for {state.get("pipeline")}, this iterator is '
                      f'{self._pipeline}; resume with the same seed, batch size, process '
                      'count and prepared data')
    self._iterator.set_state(state['grain'])


def eval_batches(path: pathlib.Path, *, batch_size: int, num_batches: int,
                 process_index: int, process_count: int) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` batches of the rows in stored order (fewer if the split
  is smaller; at least one, wrapping around the split if needed)."""
  _check_sharding(batch_size, process_index, process_count)
  rows = _rows(path)
  global_batch = batch_size * process_count
  available = len(rows) // global_batch
  n = max(1, min(num_batches, available))
  if available == 0:
    rows = rows.repeat()
  dataset = (rows[process_index::process_count].map(packing.parse_row)
             .batch(batch_size, drop_remainder=True).map(packing.rows_to_batch))
  return [dataset[i] for i in range(n)]


def read_all(path: pathlib.Path) -> np.ndarray:
  """[N, 2, L] every stored row in order (tokens, segments)."""
  rows = _rows(path)
  return np.stack([packing.parse_row(rows[i]) for i in range(len(rows))])
