"""Packing (segments, positions, weights, no token lost), row storage, atomic cache dirs."""

import numpy as np
import pytest

from lm.data import cache, loader, packing


def _hand_made():
  docs = [np.array([10, 11, 12]), np.array([20]), np.array([30, 31, 32, 33, 34]), np.array([40])]
  return packing.pack(docs, seq_len=4, bos_id=1, eos_id=2)


def test_pack_hand_made_rows_and_segments():
  tokens_NL, segments_NL = _hand_made()
  assert tokens_NL.tolist() == [[1, 10, 11, 12, 2],
                                [1, 20, 2, 1, 30],
                                [31, 32, 33, 34, 2],  # continues doc 3: a new segment 1
                                [1, 40, 2, 0, 0]]  # final row padded with 0
  assert segments_NL.tolist() == [[1, 1, 1, 1, 1],
                                  [1, 1, 1, 2, 2],
                                  [1, 1, 1, 1, 1],
                                  [1, 1, 1, 0, 0]]
  assert tokens_NL.dtype == segments_NL.dtype == np.int32


def test_rows_to_batch_hand_made():
  tokens_NL, segments_NL = _hand_made()
  batch = packing.rows_to_batch(np.stack([tokens_NL, segments_NL], axis=1))
  assert batch['inputs'][1].tolist() == [1, 20, 2, 1]
  assert batch['targets'][1].tolist() == [20, 2, 1, 30]
  assert batch['segment_ids'][1].tolist() == [1, 1, 1, 2]
  assert batch['positions'][1].tolist() == [0, 1, 2, 0]
  assert batch['weights'][1].tolist() == [1, 1, 0, 1]  # eos -> next doc's bos is not a target
  assert batch['positions'][2].tolist() == [0, 1, 2, 3]
  assert batch['weights'][2].tolist() == [1, 1, 1, 1]
  assert batch['inputs'][3].tolist() == [1, 40, 2, 0]
  assert batch['segment_ids'][3].tolist() == [1, 1, 1, 0]
  assert batch['positions'][3].tolist() == [0, 1, 2, 0]
  assert batch['weights'][3].tolist() == [1, 1, 0, 0]
  assert {k: v.dtype for k, v in batch.items()} == {
      'inputs': np.int32, 'targets': np.int32, 'segment_ids': np.int32,
      'positions': np.int32, 'weights': np.float32}


def _reference(segments_L):
  """Loop version of positions and weights for one row."""
  positions, weights = [], []
  for t in range(len(segments_L) - 1):
    start = t == 0 or segments_L[t] != segments_L[t - 1]
    positions.append(0 if segments_L[t] == 0 or start else positions[-1] + 1)
    weights.append(float(segments_L[t + 1] == segments_L[t] != 0))
  return positions, weights


def test_no_token_lost_and_batch_matches_reference():
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 100, size=rng.integers(0, 40)).astype(np.int32) for _ in range(50)]
  tokens_NL, segments_NL = packing.pack(docs, seq_len=16, bos_id=1, eos_id=2)
  stream = np.concatenate([np.concatenate([[1], d, [2]]) for d in docs])
  flat = tokens_NL.reshape(-1)
  assert flat[:len(stream)].tolist() == stream.tolist()
  assert not flat[len(stream):].any() and len(flat) - len(stream) < 17
  assert not segments_NL.reshape(-1)[len(stream):].any()
  batch = packing.rows_to_batch(np.stack([tokens_NL, segments_NL], axis=1))
  for n in range(len(tokens_NL)):
    positions, weights = _reference(segments_NL[n].tolist())
    assert batch['positions'][n].tolist() == positions
    assert batch['weights'][n].tolist() == weights
  # Segments count document pieces: a new id exactly where a bos starts a document.
  starts_NL = np.diff(segments_NL, axis=1) > 0
  is_bos_NL = (tokens_NL[:, 1:] == 1) & (segments_NL[:, 1:] > 0)
  assert (starts_NL == is_bos_NL).all()


def test_document_order_is_a_fixed_permutation():
  order = packing.document_order(100)
  assert sorted(order.tolist()) == list(range(100))
  assert order.tolist() != list(range(100))
  assert order.tolist() == packing.document_order(100).tolist()


def test_rows_round_trip_through_array_record(tmp_path):
  tokens_NL, segments_NL = _hand_made()
  path = tmp_path / 'rows.array_record'
  packing.write_rows(path, tokens_NL, segments_NL)
  rows_N2L = loader.read_all(path)
  assert rows_N2L.dtype == np.int32
  assert (rows_N2L[:, 0] == tokens_NL).all() and (rows_N2L[:, 1] == segments_NL).all()


def test_atomic_dir_publishes_on_success_only(tmp_path):
  final = tmp_path / 'entry'
  with pytest.raises(RuntimeError), cache.atomic_dir(final) as tmp:
    (tmp / 'half').write_text('x')
    raise RuntimeError('interrupted')
  assert not final.exists() and list(tmp_path.iterdir()) == []
  with cache.atomic_dir(final) as tmp:
    (tmp / 'done').write_text('ok')
  assert (final / 'done').read_text() == 'ok' and list(tmp_path.iterdir()) == [final]


def test_atomic_dir_concurrent_writer_wins(tmp_path):
  final = tmp_path / 'entry'
  with cache.atomic_dir(final) as tmp:
    (tmp / 'mine').write_text('late')
    final.mkdir()  # another process renamed its copy in first
    (final / 'theirs').write_text('early')
  assert [p.name for p in final.iterdir()] == ['theirs']
  assert list(tmp_path.iterdir()) == [final]


def test_cache_root_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv('LM_CACHE', str(tmp_path / 'env'))
  assert cache.cache_root(str(tmp_path / 'cfg')) == tmp_path / 'cfg'
  assert cache.cache_root('') == tmp_path / 'env'
  monkeypatch.delenv('LM_CACHE')
  assert str(cache.cache_root('')).endswith('.cache/lm')


def test_stride_gives_overlapping_windows_with_their_own_segments():
  docs = [np.arange(10, 30, dtype=np.int32), np.arange(40, 45, dtype=np.int32)]
  tokens_NL, segments_NL = packing.pack(docs, 7, 1, 2, stride=3)
  stream = np.concatenate([[1], docs[0], [2], [1], docs[1], [2]])
  assert tokens_NL.shape == (len(range(0, len(stream) - 8 + 1, 3)), 8)
  for n, row in enumerate(tokens_NL):
    assert row.tolist() == stream[3 * n:3 * n + 8].tolist()
  assert segments_NL[0].tolist() == [1] * 8
  assert segments_NL[6].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]  # the second document starts


def _blocks(blocks) -> tuple[np.ndarray, np.ndarray]:
  blocks = list(blocks)
  return np.concatenate([t for t, _ in blocks]), np.concatenate([s for _, s in blocks])


@pytest.mark.parametrize('seq_len,stride', [(4, 0), (7, 8), (7, 3), (5, 1), (16, 0), (40, 0),
                                            (40, 7)])
def test_pack_stream_equals_pack(seq_len, stride):
  rng = np.random.default_rng(seq_len + stride)
  docs = [rng.integers(3, 100, size=rng.integers(0, 30)).astype(np.int32) for _ in range(40)]
  want = packing.pack(docs, seq_len, 1, 2, stride=stride)
  for chunk in (1, 13, 100, 1 << 20):  # block boundaries anywhere, or one block
    got = _blocks(packing.pack_stream(iter(docs), seq_len, 1, 2, stride=stride,
                                      chunk_tokens=chunk))
    assert got[0].dtype == got[1].dtype == np.int32
    assert got[0].shape == want[0].shape
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
  # A stream shorter than a row is one padded row, with or without a stride.
  short = [np.array([5, 6], np.int32)]
  for s in (0, 3):
    got = _blocks(packing.pack_stream(iter(short), 8, 1, 2, stride=s, chunk_tokens=1))
    assert got[0].tolist() == [[1, 5, 6, 2, 0, 0, 0, 0, 0]]


def test_pack_stream_consumes_documents_lazily():
  taken = [0]

  def docs():
    for _ in range(1000):
      taken[0] += 1
      if taken[0] > 12:
        raise AssertionError('read past the first block')
      yield np.arange(3, 13, dtype=np.int32)  # 12 tokens with bos/eos

  blocks = packing.pack_stream(docs(), seq_len=11, bos_id=1, eos_id=2, chunk_tokens=48)
  tokens_NL, _ = next(blocks)  # four documents fill four rows; nothing more is read
  assert tokens_NL.shape == (4, 12) and taken[0] == 4


def test_shard_writer_splits_rows_into_bounded_shards(tmp_path):
  tokens_NL, segments_NL = _hand_made()
  writer = packing.ShardWriter(tmp_path, 'train', rows_per_shard=3)
  writer.write(tokens_NL[:2], segments_NL[:2])
  writer.write(tokens_NL[2:], segments_NL[2:])
  names = writer.close()
  assert names == ['train-00000.array_record', 'train-00001.array_record'] and writer.rows == 4
  assert [len(loader.read_all(tmp_path / n)) for n in names] == [3, 1]
  rows_N2L = loader.read_all([tmp_path / n for n in names])  # indexed across the shards
  assert (rows_N2L[:, 0] == tokens_NL).all() and (rows_N2L[:, 1] == segments_NL).all()
