"""Grain pipelines over the packed rows: the shuffled, sharded training stream and
the fixed evaluation batches.

Multi-host contract: the global stream is one seeded shuffle of the rows, repeated
forever with a different shuffle each epoch; process p of P takes elements p, p+P,
p+2P, ... and batches them, so the union over processes of their batch b is the
single-process batch b of size P * B.

Shard order (`ShardTrainIterator`, data.train_shards = S > 0): the packed training rows
are written round-robin into S shard files (row r of the packed stream is row r // S of
shard r % S), and global element i of the stream is shard g = i % S's element i // S,
where each shard is its own seeded shuffle repeated with a new shuffle each epoch.
Process p still takes elements p, p+P, ..., so the union over processes of batch b is
again the single-process batch b; when P divides S those elements all come from shards
p, p+P, ... (`host_shards`), and a process opens and reads only those files.
"""

import hashlib
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from lm.data import packing
from lm.data.errors import DataError

Paths = pathlib.Path | Sequence[pathlib.Path]  # one ArrayRecord file, or shards in row order


def _source(paths: Paths) -> grain.sources.ArrayRecordDataSource:
  """The rows of the files, indexed across them in order. Opening a shard reads only its
  index; a row's bytes are read when that row is asked for, so a host reads only its rows."""
  paths = [paths] if isinstance(paths, pathlib.Path | str) else list(paths)
  return grain.sources.ArrayRecordDataSource([str(p) for p in paths])


def _rows(paths: Paths) -> grain.MapDataset:
  return grain.MapDataset.source(_source(paths))


# Iterating a MapDataset, Grain prefetches with 16 threads into a 500-element buffer by
# default. On a 2-core machine those threads' CPU comes out of the train step: 24 ms of
# CPU per batch of 12 rows against 3-5 ms with one thread (docs/benchmarks.md, "The input
# pipeline's CPU"). One thread per 8 cores, up to Grain's 16, keeps a big host's rate.
READ_OPTIONS = grain.ReadOptions(num_threads=max(1, min(16, (os.cpu_count() or 1) // 8)),
                                 prefetch_buffer_size=16)


def _iterate(dataset: grain.MapDataset):
  """The training stream's iterator, prefetching with READ_OPTIONS."""
  return dataset.to_iter_dataset(READ_OPTIONS).__iter__()


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


class IndexBatchIterator:
  """Endless batches over `num_rows` rows: Grain shuffles the row indices (per epoch,
  seeded), process p takes p::P, batches them, and `make_batch` turns a batch of indices
  into arrays. Its state is JSON-serialisable and checked on restore."""

  def __init__(self, num_rows: int, make_batch: Callable[[np.ndarray], dict[str, np.ndarray]],
               *, batch_size: int, seed: int, process_index: int, process_count: int):
    _check_sharding(batch_size, process_index, process_count)
    dataset = (grain.MapDataset.range(num_rows).shuffle(seed=shuffle_seed(seed)).repeat()
               [process_index::process_count]
               .batch(batch_size, drop_remainder=True)
               .map(lambda index_B: make_batch(np.asarray(index_B))))
    self._iterator = _iterate(dataset)
    # What a saved state is only valid for (process_index is not in it: every process
    # is at the same step, so any process's state restores any other).
    self._pipeline = {'seed': int(seed), 'batch_size': int(batch_size),
                      'process_count': int(process_count), 'rows': int(num_rows)}

  def __iter__(self) -> 'IndexBatchIterator':
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


class TrainIterator(IndexBatchIterator):
  """Infinite iterator of training batches read from a packed ArrayRecord split."""

  def __init__(self, path: Paths, *, batch_size: int, seed: int,
               process_index: int, process_count: int):
    source = _source(path)
    # Grain orders, shards and batches row *indices*; a batch's rows are then read in one
    # call (ArrayRecord's batched read: 4.5 ms of CPU per batch of 12 rows against 9 ms
    # reading them one by one, docs/benchmarks.md) — time taken from the train step on a
    # 2-core machine.
    def read_batch(index_B: np.ndarray) -> dict[str, np.ndarray]:
      records = source.__getitems__([int(i) for i in index_B])
      return packing.rows_to_batch(np.stack([packing.parse_row(r) for r in records]))

    super().__init__(len(source), read_batch, batch_size=batch_size, seed=seed,
                     process_index=process_index, process_count=process_count)


def host_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The shard files process p of P reads in the shard order: p, p+P, p+2P, ...

  P must divide the shard count, so every process owns num_shards / P shards and the
  global element i (shard i % S) falls to process i % P, the owner of that shard."""
  _check_sharding(1, process_index, process_count)
  if num_shards < 1 or num_shards % process_count:
    raise DataError(f'the training rows are in {num_shards} shard(s), which '
                    f'{process_count} processes cannot split evenly; set data.train_shards '
                    f'to a multiple of the process count (e.g. {process_count * 8})')
  return list(range(process_index, num_shards, process_count))


def _shard_seed(seed: int, shard: int) -> int:
  digest = hashlib.sha256(f'lm.data.train/{int(seed)}/shard{int(shard)}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little')


class ShardTrainIterator:
  """Training batches in the shard order (module docstring): process p opens only its own
  shard files (`host_shards`) and reads rows from them alone.

  `paths` are all S shards of the split in shard order; only this process's are opened
  (their row counts come from `shard_rows` when given, else from opening them)."""

  def __init__(self, paths: Sequence[pathlib.Path], *, batch_size: int, seed: int,
               process_index: int, process_count: int,
               shard_rows: Sequence[int] | None = None):
    _check_sharding(batch_size, process_index, process_count)
    paths = list(paths)
    num_shards = len(paths)
    self.shards = host_shards(num_shards, process_index, process_count)
    self.sources = {g: _source([paths[g]]) for g in self.shards}
    rows = {g: (int(shard_rows[g]) if shard_rows is not None else len(self.sources[g]))
            for g in self.shards}
    for g in self.shards:
      if rows[g] < 1:
        raise DataError(f'shard {paths[g]} holds no rows; lower data.train_shards so every '
                        'shard gets at least one')
    orders = {g: grain.MapDataset.range(rows[g]).shuffle(seed=_shard_seed(seed, g)).repeat()
              for g in self.shards}

    def read_batch(index_B: np.ndarray) -> dict[str, np.ndarray]:
      records = []
      for i in index_B:
        g, k = int(i) % num_shards, int(i) // num_shards
        records.append(self.sources[g][int(orders[g][k])])
      return packing.rows_to_batch(np.stack([packing.parse_row(r) for r in records]))

    dataset = (grain.MapDataset.range(sys.maxsize)[process_index::process_count]
               .batch(batch_size, drop_remainder=True)
               .map(lambda index_B: read_batch(np.asarray(index_B))))
    self._iterator = _iterate(dataset)
    self._pipeline = {'seed': int(seed), 'batch_size': int(batch_size),
                      'process_count': int(process_count), 'order': 'shards',
                      'shards': num_shards}

  __iter__ = IndexBatchIterator.__iter__
  __next__ = IndexBatchIterator.__next__
  get_state = IndexBatchIterator.get_state
  set_state = IndexBatchIterator.set_state


def eval_batches(path: Paths, *, batch_size: int, num_batches: int,
                 process_index: int, process_count: int) -> list[dict[str, np.ndarray]]:
  """`num_batches` batches of rows spread evenly over the whole split (all of it if it is
  smaller; at least one batch, wrapping around the split if needed).

  Evenly spread rows estimate the loss of the whole split; the first rows alone
  measure only the text the split happens to start with.
  """
  _check_sharding(batch_size, process_index, process_count)
  rows = _rows(path)
  global_batch = batch_size * process_count
  available = len(rows) // global_batch
  n = max(1, min(num_batches, available))
  total = n * global_batch
  picked_N = (np.arange(total) * len(rows)) // total if available else np.arange(total) % len(rows)
  mine_N = picked_N[process_index::process_count]
  rows_N2L = np.stack([packing.parse_row(rows[int(i)]) for i in mine_N])
  return [packing.rows_to_batch(rows_N2L[b * batch_size:(b + 1) * batch_size])
          for b in range(n)]


def read_all(path: Paths) -> np.ndarray:
  """[N, 2, L] every stored row in order (tokens, segments)."""
  rows = _rows(path)
  return np.stack([packing.parse_row(rows[i]) for i in range(len(rows))])
