"""data.train_shards: round-robin train shards, each host opening and reading only its own,
the union of the hosts' batches the 1-host batch (2 "hosts" simulated in one process)."""

import pathlib

import numpy as np
import pytest

from lm.data import DataError, PreparedData, loader, prepare
from tests.unit.data.test_data_pipeline import SEQ_LEN, _cfg, _row_keys, _write_corpus

SHARDS = 4


@pytest.fixture(scope='module')
def sharded(tmp_path_factory) -> tuple[PreparedData, PreparedData]:
  """The same corpus and cache prepared with data.train_shards=4 and with the default."""
  corpus = _write_corpus(tmp_path_factory.mktemp('corpus'))
  cache = tmp_path_factory.mktemp('cache')
  cfg = _cfg(cache, source='text', path=str(corpus), val_fraction=0.2, tok_kind='byte')
  plain = prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None)
  cfg.train_shards = SHARDS
  return prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None), plain


def test_host_shards_assignment():
  assert loader.host_shards(8, 0, 1) == list(range(8))
  assert loader.host_shards(8, 1, 2) == [1, 3, 5, 7]
  assert loader.host_shards(8, 3, 4) == [3, 7]
  assert sorted(sum((loader.host_shards(12, p, 3) for p in range(3)), [])) == list(range(12))
  with pytest.raises(DataError, match='data.train_shards'):
    loader.host_shards(6, 0, 4)
  with pytest.raises(DataError, match='process_index'):
    loader.host_shards(4, 2, 2)


def test_round_robin_store_holds_the_packed_rows(sharded):
  data, plain = sharded
  paths = data.split_paths('train')
  assert len(paths) == SHARDS and data.packed_path.name.endswith(f'-shards{SHARDS}')
  rows = [len(loader.read_all(p)) for p in paths]
  assert rows == data.stats['train_shard_rows'] and max(rows) - min(rows) <= 1
  # The shards interleaved are exactly the rows the default layout stores in order.
  np.testing.assert_array_equal(data.rows('train'), plain.rows('train'))
  np.testing.assert_array_equal(data.rows('validation'), plain.rows('validation'))


def test_two_hosts_union_is_the_one_host_batch_and_each_reads_its_shards(sharded, monkeypatch):
  data, _ = sharded
  opened = []
  real = loader._source
  monkeypatch.setattr(loader, '_source', lambda p: opened.append(
      [p] if isinstance(p, pathlib.Path) else list(p)) or real(p))
  one = data.train_iterator(batch_size=6, seed=3)
  assert len(opened) == SHARDS
  opened.clear()
  hosts = [data.train_iterator(batch_size=3, seed=3, process_index=p, process_count=2)
           for p in range(2)]
  paths = data.split_paths('train')
  assert opened == [[paths[0]], [paths[2]], [paths[1]], [paths[3]]]
  assert hosts[0].shards == [0, 2] and hosts[1].shards == [1, 3]
  # 8 global batches of 6 cover every row (20-ish rows) more than once: epochs wrap.
  for _ in range(8):
    want = next(one)
    got = [next(h) for h in hosts]
    union = {k: np.concatenate([g[k] for g in got]) for k in want}
    assert _row_keys(union) == _row_keys(want)
  # A host's rows come only from its shards.
  own = {tuple(r[0, :-1]) for p in (0, 2) for r in loader.read_all(paths[p])}
  batch = next(hosts[0])
  assert all(tuple(r) in own for r in batch['inputs'])


def test_every_row_is_seen_once_per_shard_epoch_and_state_round_trips(sharded):
  data, _ = sharded
  n = data.stats['train_shard_rows']
  it = data.train_iterator(batch_size=SHARDS, seed=0)
  first = [next(it) for _ in range(min(n))]  # batch k holds element k of every shard
  for g, path in enumerate(data.split_paths('train')):
    shard = {tuple(r[0, :-1]) for r in loader.read_all(path)}
    seen = [tuple(b['inputs'][g]) for b in first]  # batch k, row g: shard g's element k
    assert set(seen) <= shard and len(set(seen)) == len(seen)  # no repeat within an epoch
  state = it.get_state()
  after = next(it)
  again = data.train_iterator(batch_size=SHARDS, seed=0)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)['inputs'], after['inputs'])
  with pytest.raises(DataError, match='process count'):
    data.train_iterator(batch_size=2, seed=0, process_index=0, process_count=2).set_state(state)


def test_more_processes_than_the_shards_divide_is_an_error(sharded):
  data, _ = sharded
  with pytest.raises(DataError, match='multiple of the process count'):
    data.train_iterator(batch_size=2, seed=0, process_index=0, process_count=3)


def test_train_shards_with_a_mixture_is_a_config_error():
  from configs.default import get_config
  from lm import config as config_lib
  c = get_config()
  c.data.train_shards = 4
  c.data.mixture = (('a', 'stdlib', 1.0),)
  with pytest.raises(config_lib.ConfigError, match='data.train_shards=4'):
    config_lib.validate(c, num_devices=8)


def test_a_batch_is_the_shard_order_row_for_row(sharded):
  """Global element i is shard i % S's element i // S of that shard's seeded order (the
  module docstring), in the batch's own order, also where a batch takes several rows
  from one shard (the union test above compares sorted rows only)."""
  import grain

  from lm.data import packing
  data, _ = sharded
  shard_rows = [loader.read_all(p) for p in data.split_paths('train')]
  orders = [grain.MapDataset.range(len(rows)).shuffle(seed=loader._shard_seed(5, g)).repeat()
            for g, rows in enumerate(shard_rows)]
  it = data.train_iterator(batch_size=6, seed=5)
  for b in range(3):
    elements = range(6 * b, 6 * b + 6)
    want = packing.rows_to_batch(np.stack(
        [shard_rows[i % SHARDS][orders[i % SHARDS][i // SHARDS]] for i in elements]))
    got = next(it)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
