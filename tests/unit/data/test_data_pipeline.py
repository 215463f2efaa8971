"""prepare() end to end: TFDS cache, reuse, loaders, sharding, iterator state, seeds."""

import json
import pathlib
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.default import get_config
from lm.data import DataError, PreparedData, packing, prepare, sources, split, store
from lm.data.tokenizers import spm

prepare_lib = sys.modules['lm.data.prepare']  # the module (lm.data.prepare is also the function)

SEQ_LEN = 32


def _cfg(cache_dir: pathlib.Path, **overrides):
  c = get_config().data
  c.cache_dir = str(cache_dir)
  for k, v in overrides.items():
    if k.startswith('tok_'):
      setattr(c.tokenizer, k[4:], v)
    else:
      setattr(c, k, v)
  return c


def _write_corpus(root: pathlib.Path, num_docs: int = 60) -> pathlib.Path:
  rng = np.random.default_rng(1)
  words = ['def', 'return', 'self', 'x', 'y', '\n', '\t', '    ', 'λ', '🙂', '(', ')', ':']
  root.mkdir(parents=True, exist_ok=True)
  for i in range(num_docs):
    text = ' '.join(rng.choice(words, size=rng.integers(10, 120)))
    (root / f'doc{i:03d}.txt').write_text(f'# document {i}\n{text}\n')
  return root


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> pathlib.Path:
  return _write_corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def prepared(corpus, tmp_path_factory) -> PreparedData:
  cfg = _cfg(tmp_path_factory.mktemp('cache'), source='text', path=str(corpus),
             val_fraction=0.2, tok_kind='byte')
  return prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None)


def _row_keys(batch) -> list[tuple]:
  return sorted(tuple(r) for r in np.concatenate([batch['inputs'], batch['targets']], axis=1))


# ---- prepare -------------------------------------------------------------------


def test_documents_go_through_tfds_array_record(prepared):
  stats = prepared.stats
  directory = store.dataset_dir(prepared.root / 'documents')
  assert sorted(p.name for p in directory.glob('*.array_record*')) == [
      'lm_documents-train.array_record-00000-of-00001',
      'lm_documents-validation.array_record-00000-of-00001']
  builder = tfds.builder_from_directory(str(directory))
  assert builder.info.splits['train'].num_examples == stats['train_docs']
  assert builder.info.splits['validation'].num_examples == stats['validation_docs']
  assert stats['train_docs'] + stats['validation_docs'] == 60 and stats['validation_docs'] >= 1


def test_packed_rows_hold_every_train_document(prepared, corpus):
  rows_N2L = prepared.rows('train')
  assert rows_N2L.shape == (prepared.stats['train_rows'], 2, SEQ_LEN + 1)
  stream = rows_N2L[:, 0].reshape(-1)
  stream = stream[:prepared.stats['train_tokens']]
  assert not rows_N2L[:, 0].reshape(-1)[len(stream):].any()  # only the tail is padding
  bos, eos = prepared.tokenizer.bos_id, prepared.tokenizer.eos_id
  starts = np.flatnonzero(stream == bos)
  ends = [*starts[1:], len(stream)]
  docs = [prepared.tokenizer.decode(stream[s:e]) for s, e in zip(starts, ends, strict=True)]
  assert all(stream[e - 1] == eos for e in ends)
  train_texts = store.read_texts(prepared.root / 'documents', 'train')
  assert sorted(docs) == sorted(train_texts)
  assert docs != train_texts  # packed in the fixed shuffled order
  all_texts = {p.read_text() for p in corpus.iterdir()}
  val_texts = store.read_texts(prepared.root / 'documents', 'validation')
  assert set(train_texts) | set(val_texts) == all_texts


def _in_memory_rows(p: PreparedData, split_name: str, stride: int = 0) -> np.ndarray:
  """The rows the whole split packed in memory gives (what prepare wrote before it streamed)."""
  ids = p.tokenizer.encode_batch(store.read_texts(p.docs_dir, split_name))
  order = packing.document_order(len(ids))
  tokens_NL, segments_NL = packing.pack([ids[i] for i in order], p.seq_len, p.tokenizer.bos_id,
                                        p.tokenizer.eos_id, stride=stride)
  return np.stack([tokens_NL, segments_NL], axis=1)


@pytest.mark.parametrize('method,stride', [('document', 0), ('tail', 5)])
def test_streamed_preparation_equals_the_in_memory_one(corpus, tmp_path, monkeypatch, method,
                                                       stride):
  monkeypatch.setattr(prepare_lib, 'PACK_BATCH_DOCS', 7)  # many tokenize batches ...
  monkeypatch.setattr(prepare_lib, 'ROWS_PER_SHARD_BYTES', 8 * (SEQ_LEN + 1) * 50)  # ... shards
  cfg = _cfg(tmp_path, source='text', path=str(corpus), val_fraction=0.2, tok_kind='char',
             split=method, train_row_stride=stride)
  p = prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None)
  docs = sources.read(cfg).documents
  for name, want in split.split_documents(docs, method, 0.2).items():
    assert store.read_texts(p.docs_dir, name) == [d.text for d in want]
    assert list(store.iter_texts(p.docs_dir, name)) == [d.text for d in want]  # stored in order
    assert p.stats[f'{name}_docs'] == len(want)
    assert p.stats[f'{name}_bytes'] == sum(len(d.text.encode()) for d in want)
  assert len(p.stats['train_shards']) == -(-p.stats['train_rows'] // 50) > 1
  assert [q.name for q in p.split_paths('train')] == p.stats['train_shards']
  assert np.array_equal(p.rows('train'), _in_memory_rows(p, 'train', stride))
  assert np.array_equal(p.rows('validation'), _in_memory_rows(p, 'validation'))
  # The loaders read across the shards: every row, in the single-shard order.
  it = p.train_iterator(batch_size=p.stats['train_rows'], seed=0)
  assert _row_keys(next(it)) == _row_keys(packing.rows_to_batch(p.rows('train')))


def test_rows_of_a_cache_written_before_shards_are_read(prepared, tmp_path):
  legacy = tmp_path / 'packed'
  legacy.mkdir()
  for name in split.SPLITS:
    rows_N2L = prepared.rows(name)
    packing.write_rows(legacy / f'{name}.array_record', rows_N2L[:, 0], rows_N2L[:, 1])
  stats = {k: v for k, v in prepared.stats.items() if not k.endswith('_shards')}
  old = PreparedData(root=prepared.root, tokenizer=prepared.tokenizer,
                     tokenizer_path=prepared.tokenizer_path, packed_path=legacy,
                     seq_len=SEQ_LEN, stats=stats)
  assert np.array_equal(old.rows('train'), prepared.rows('train'))
  assert _row_keys(next(old.train_iterator(batch_size=4, seed=1))) == _row_keys(
      next(prepared.train_iterator(batch_size=4, seed=1)))


def test_second_prepare_reuses_the_cache(corpus, tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, source='text', path=str(corpus), val_fraction=0.2,
             tok_vocab_size=400, tok_kind='sentencepiece')
  first = prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None)

  def fail(*args, **kwargs):
    raise AssertionError('rebuilt a cached entry')

  monkeypatch.setattr(spm, 'train', fail)
  monkeypatch.setattr(store, 'write', fail)
  monkeypatch.setattr('lm.data.packing.pack', fail)
  monkeypatch.setattr('lm.data.packing.pack_stream', fail)
  second = prepare(cfg, seq_len=SEQ_LEN, log=lambda _: None)
  assert second.stats == first.stats and second.root == first.root
  with pytest.raises(AssertionError, match='rebuilt'):  # a new seq_len repacks ...
    prepare(cfg, seq_len=SEQ_LEN + 1, log=lambda _: None)
  monkeypatch.undo()
  monkeypatch.setattr(spm, 'train', fail)  # ... but reuses the tokenizer
  third = prepare(cfg, seq_len=SEQ_LEN + 1, log=lambda _: None)
  assert third.tokenizer_path == first.tokenizer_path and third.stats['seq_len'] == SEQ_LEN + 1
  entries = sorted(p.name for p in first.root.iterdir())
  assert entries == ['documents', f'packed-{first.stats["tokenizer"]}-{SEQ_LEN}',
                     f'packed-{first.stats["tokenizer"]}-{SEQ_LEN + 1}',
                     f'tokenizer-{first.stats["tokenizer"]}']  # no temp dirs left


def test_source_change_gets_a_new_cache_entry(tmp_path):
  corpus = _write_corpus(tmp_path / 'c', num_docs=10)
  cfg = _cfg(tmp_path / 'cache', source='text', path=str(corpus), val_fraction=0.3, tok_kind='char')
  first = prepare(cfg, seq_len=8, log=lambda _: None)
  (corpus / 'doc000.txt').write_text('changed content, longer than before ' * 3)
  second = prepare(cfg, seq_len=8, log=lambda _: None)
  assert second.root != first.root
  assert second.stats['train_chars'] + second.stats['validation_chars'] != (
      first.stats['train_chars'] + first.stats['validation_chars'])


def test_validation_smaller_than_a_row_is_an_error_and_leaves_no_entry(corpus, tmp_path):
  cfg = _cfg(tmp_path, source='text', path=str(corpus), val_fraction=0.001, tok_kind='byte')
  with pytest.raises(DataError, match='validation split has .* raise data.val_fraction'):
    prepare(cfg, seq_len=4096, log=lambda _: None)
  (root,) = tmp_path.iterdir()
  assert not any(p.name.startswith(('packed', '.tmp')) for p in root.iterdir())


def test_stdlib_end_to_end_with_sentencepiece(tmp_path):
  lines = []
  cfg = _cfg(tmp_path, max_docs=25, tok_vocab_size=512, tok_max_train_chars=300_000)
  p = prepare(cfg, seq_len=64, log=lines.append)
  assert p.root.name.startswith('stdlib-') and p.tokenizer.vocab_size == 512
  assert any('training sentencepiece' in line for line in lines)
  sample = p.val_text_sample(500)
  assert len(sample) == 500 and p.tokenizer.decode(p.tokenizer.encode(sample)) == sample
  batch = p.eval_batches(batch_size=2, num_batches=1)[0]
  assert batch['inputs'].shape == (2, 64)
  assert p.stats['train_bytes_per_token'] > 1.5


# ---- loaders -------------------------------------------------------------------


def test_train_batches_are_consistent(prepared):
  batch = next(prepared.train_iterator(batch_size=4, seed=0))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'inputs': ((4, SEQ_LEN), np.int32), 'targets': ((4, SEQ_LEN), np.int32),
      'segment_ids': ((4, SEQ_LEN), np.int32), 'positions': ((4, SEQ_LEN), np.int32),
      'weights': ((4, SEQ_LEN), np.float32)}
  assert (batch['inputs'][:, 1:] == batch['targets'][:, :-1]).all()
  assert (batch['positions'][batch['segment_ids'] > 0].min() == 0)
  assert batch['weights'].sum() > 0


def test_process_shards_union_to_the_global_batch(prepared):
  single = prepared.train_iterator(batch_size=8, seed=3)
  shards = [prepared.train_iterator(batch_size=4, seed=3, process_index=p, process_count=2)
            for p in range(2)]
  steps = prepared.stats['train_rows'] // 8 + 3  # crosses an epoch boundary
  for _ in range(steps):
    parts = [next(it) for it in shards]
    union = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    assert _row_keys(union) == _row_keys(next(single))
  first = [next(it) for it in shards]
  assert _row_keys(first[0]) != _row_keys(first[1])


def test_each_epoch_is_a_new_permutation(prepared):
  rows = prepared.stats['train_rows']
  it = prepared.train_iterator(batch_size=1, seed=0)
  seen = [tuple(next(it)['inputs'][0]) for _ in range(2 * rows)]
  stored = sorted(tuple(r[0, :-1]) for r in prepared.rows('train'))
  assert sorted(seen[:rows]) == stored and sorted(seen[rows:]) == stored
  assert seen[:rows] != seen[rows:]


def test_seeds_decide_the_order(prepared):
  def first_batches(seed):
    it = prepared.train_iterator(batch_size=4, seed=seed)
    return [next(it)['inputs'].tolist() for _ in range(3)]
  assert first_batches(0) == first_batches(0)
  assert first_batches(0) != first_batches(1)


def test_iterator_state_round_trip(prepared):
  it = prepared.train_iterator(batch_size=4, seed=7, process_index=1, process_count=2)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(2)]
  fresh = prepared.train_iterator(batch_size=4, seed=7, process_index=1, process_count=2)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    assert all((got[k] == want[k]).all() for k in want)
  with pytest.raises(DataError, match='same seed'):
    prepared.train_iterator(batch_size=4, seed=8, process_count=2).set_state(state)


def test_eval_batches_are_fixed_and_sharded(prepared):
  a = prepared.eval_batches(batch_size=2, num_batches=3)
  b = prepared.eval_batches(batch_size=2, num_batches=3)
  assert len(a) == 3 and all((x[k] == y[k]).all() for x, y in zip(a, b, strict=True) for k in x)
  stored = prepared.rows('validation')
  # Rows spread evenly over the split, in stored order (no shuffle).
  spread = (np.arange(6) * len(stored)) // 6
  assert a[0]['inputs'].tolist() == stored[spread[:2], 0, :-1].tolist()
  assert a[2]['inputs'].tolist() == stored[spread[4:], 0, :-1].tolist()
  assert spread[-1] > len(stored) // 2  # not just the split's first rows
  shards = [prepared.eval_batches(batch_size=1, num_batches=3, process_index=p, process_count=2)
            for p in range(2)]
  for n in range(3):
    union = {k: np.concatenate([shards[0][n][k], shards[1][n][k]]) for k in a[n]}
    assert _row_keys(union) == _row_keys(a[n])
  many = prepared.eval_batches(batch_size=2, num_batches=10_000)
  assert len(many) == len(stored) // 2  # capped at the rows there are
  (wrapped,) = prepared.eval_batches(batch_size=len(stored) + 1, num_batches=2)
  assert wrapped['inputs'].tolist() == stored[[*range(len(stored)), 0], 0, :-1].tolist()


def test_val_text_sample_is_the_start_of_validation(prepared):
  texts = store.read_texts(prepared.root / 'documents', 'validation')
  assert prepared.val_text_sample(100) == ''.join(texts)[:100]
  assert prepared.val_text_sample(100) == prepared.val_text_sample(100)
  assert prepared.val_text_sample(10 ** 9) == ''.join(texts)


def test_the_prefetching_stream_is_grains_shuffled_order_row_for_row(prepared):
  """The training stream (Grain prefetching with loader.READ_OPTIONS, a batch's rows read in
  one ArrayRecord call) against the stored rows taken in Grain's own shuffled order, one
  at a time: the same rows in the same places, batch after batch."""
  import grain

  from lm.data import loader
  stored = prepared.rows('train')
  order = grain.MapDataset.range(len(stored)).shuffle(seed=loader.shuffle_seed(3)).repeat()
  it = prepared.train_iterator(batch_size=3, seed=3)
  for b in range(2 * len(stored) // 3):
    want = stored[[order[3 * b + j] for j in range(3)], 0, :-1]
    assert next(it)['inputs'].tolist() == want.tolist(), f'batch {b}'
