"""prepare(): source -> TFDS ArrayRecord documents -> tokenizer -> packed rows, cached.

Cache layout, each entry built in a temp dir and renamed into place (lm/data/cache.py):

  <cache_dir>/<source>-<hash of source config>/
    documents/                     TFDS data_dir: lm_documents/1.0.0/*.array_record, + meta.json
    tokenizer-<tok key>/           tokenizer.json (+ spm.model | chars.json)
    packed-<tok key>-<seq_len>/    {train,validation}-NNNNN.array_record shards, meta.json
                                   (caches written before shards: {train,validation}.array_record)

A second call with the same config only stats the source files and reads meta.json.

Every step streams, so memory does not grow with the corpus: the source is read a
document at a time (once to split it, keeping a number per document, then once per
split while TFDS writes it); the tokenizer streams the training split (sentencepiece
keeps only its max_train_chars sample); packing reads documents by index in the fixed
shuffled order, tokenizes them PACK_BATCH_DOCS at a time, packs them into rows as they
come (packing.pack_stream) and writes shards of at most ROWS_PER_SHARD_BYTES as they
fill. The rows are those `packing.pack` gives the whole split in memory.

Multi-host: by default every host opens the shards and reads only its own rows (the
loader's index order, process p taking rows p, p+P, ...: lm/data/loader.py), by random
access. With data.train_shards = S the train rows go round-robin into S shards
(packed-...-shardsS/, row r in shard r % S) and each host opens and reads only its own
shards (loader.ShardTrainIterator, loader.host_shards).
"""

import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lm.data import cache, loader, packing, sources, split, store, tokenizers
from lm.data.errors import DataError
from lm.data.tokenizers import Tokenizer

FORMAT = 1  # bump when the on-disk layout changes, so old caches are not reused
Log = Callable[[str], None]
PACK_BATCH_DOCS = 256  # documents tokenized at once while packing
ROWS_PER_SHARD_BYTES = 256 << 20  # a packed shard holds at most this many bytes of rows


class PreparedData:
  """A prepared corpus: its tokenizer, stats and loaders."""

  def __init__(self, *, root: pathlib.Path, tokenizer: Tokenizer, tokenizer_path: pathlib.Path,
               packed_path: pathlib.Path, seq_len: int, stats: dict[str, Any],
               docs_dir: pathlib.Path | None = None):
    self.root = root  # this source's cache directory
    self.docs_dir = docs_dir or root / 'documents'  # the TFDS ArrayRecord documents
    self.tokenizer_path = tokenizer_path  # tokenizers.load(tokenizer_path) rebuilds it
    self.packed_path = packed_path
    self.seq_len = seq_len
    self.stats = stats
    self.tokenizer = tokenizer

  def split_paths(self, split_name: str) -> list[pathlib.Path]:
    """The ArrayRecord shards of a packed split, in row order."""
    if split_name not in split.SPLITS:
      raise DataError(f'split {split_name!r}: expected one of {split.SPLITS}')
    names = self.stats.get(f'{split_name}_shards') or [f'{split_name}.array_record']
    return [self.packed_path / name for name in names]

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> loader.TrainIterator:
    """Endless shuffled training batches for this process (see lm/data/loader.py); with
    data.train_shards the shard order, this process opening only its own shards."""
    if self.stats.get('train_order') == 'shards':
      return loader.ShardTrainIterator(
          self.split_paths('train'), batch_size=batch_size, seed=seed,
          process_index=process_index, process_count=process_count,
          shard_rows=self.stats['train_shard_rows'])
    return loader.TrainIterator(self.split_paths('train'), batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count)

  def eval_batches(self, batch_size: int, num_batches: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The same validation batches on every call (no shuffle)."""
    return loader.eval_batches(self.split_paths('validation'), batch_size=batch_size,
                               num_batches=num_batches, process_index=process_index,
                               process_count=process_count)

  def val_text_sample(self, num_chars: int) -> str:
    """The first `num_chars` characters of the validation text (documents in order)."""
    out, n = [], 0
    for text in store.iter_texts(self.docs_dir, 'validation'):
      if n >= num_chars:
        break
      out.append(text[:num_chars - n])
      n += len(out[-1])
    return ''.join(out)

  def rows(self, split_name: str) -> np.ndarray:
    """[N, 2, seq_len + 1] int32: every packed row (tokens, segments) in packed order."""
    if split_name == 'train' and self.stats.get('train_order') == 'shards':
      return packing.interleave([loader.read_all(p) for p in self.split_paths('train')])
    return loader.read_all(self.split_paths(split_name))


def check_config(cfg: Any, seq_len: int) -> None:
  """Raises DataError naming the first bad field of the `data` config."""
  if cfg.source not in ('stdlib', 'text', 'tfds', 'cleaned'):
    raise DataError(f"data.source={cfg.source!r}: expected 'stdlib', 'text', 'tfds' or "
                    "'cleaned'")
  if cfg.split not in ('document', 'tail'):
    raise DataError(f"data.split={cfg.split!r}: expected 'document' or 'tail'")
  if not 0.0 < cfg.val_fraction < 1.0:
    raise DataError(f'data.val_fraction={cfg.val_fraction} must be in (0, 1)')
  if seq_len < 1:
    raise DataError(f'data.seq_len={seq_len} must be >= 1')
  if cfg.max_docs < 0:
    raise DataError(f'data.max_docs={cfg.max_docs} must be >= 0 (0 = all documents)')
  tokenizers.check_config(cfg.tokenizer)


def prepare(data_cfg: Any, seq_len: int | None = None, log: Log = print) -> PreparedData:
  """Prepares (or reuses from the cache) the corpus `data_cfg` describes."""
  seq_len = data_cfg.seq_len if seq_len is None else int(seq_len)
  check_config(data_cfg, seq_len)
  identity = {'format': FORMAT, 'source': sources.describe(data_cfg), 'split': data_cfg.split,
              'val_fraction': data_cfg.val_fraction, 'max_docs': data_cfg.max_docs}
  root = cache.cache_root(data_cfg.cache_dir) / (
      f'{sources.label(data_cfg)}-{cache.short_hash(identity)}')

  if data_cfg.source == 'cleaned':  # documents written by `python -m lm clean`
    docs_dir = sources.cleaned_dir(data_cfg.path) / 'documents'
    doc_stats = cache.read_json(docs_dir.parent / 'meta.json')['stats']
    log(f'[data] cleaned dataset {docs_dir.parent} (config '
        f'{identity["source"]["identity"]["config_hash"]}, input '
        f'{identity["source"]["identity"]["input_fingerprint"]})')
  else:
    docs_dir = root / 'documents'
    if not docs_dir.is_dir():
      _build_documents(data_cfg, identity, docs_dir, log)
    doc_stats = cache.read_json(docs_dir / 'meta.json')['stats']

  tok_key = tokenizers.key(data_cfg.tokenizer)
  tok_dir = root / f'tokenizer-{tok_key}'
  if not tok_dir.is_dir():
    start = time.perf_counter()
    with cache.atomic_dir(tok_dir) as tmp:
      tokenizers.train(data_cfg.tokenizer, lambda: store.iter_texts(docs_dir, 'train'), tmp, log)
    log(f'[data] tokenizer {tok_key} built in {time.perf_counter() - start:.1f}s')
  tokenizer = tokenizers.load(tok_dir)

  stride = data_cfg.get('train_row_stride', 0)
  packed_dir = root / f'packed-{tok_key}-{seq_len}' if not stride else (
      root / f'packed-{tok_key}-{seq_len}-stride{stride}')
  train_shards = data_cfg.get('train_shards', 0)
  if train_shards:
    packed_dir = packed_dir.with_name(f'{packed_dir.name}-shards{train_shards}')
  if not packed_dir.is_dir():
    _build_packed(tokenizer, docs_dir, packed_dir, seq_len, log, stride, train_shards)
  stats = {**doc_stats, **cache.read_json(packed_dir / 'meta.json'),
           'vocab_size': tokenizer.vocab_size, 'tokenizer': tok_key, 'seq_len': seq_len,
           'cache_path': str(root)}
  log(f'[data] {sources.label(data_cfg)}: train {stats["train_docs"]} docs, '
      f'{stats["train_tokens"]} tokens, {stats["train_rows"]} rows; validation '
      f'{stats["validation_docs"]} docs, {stats["validation_tokens"]} tokens, '
      f'{stats["validation_rows"]} rows; vocab {tokenizer.vocab_size}; cached in {root}')
  if stats['replaced_bytes']:
    log(f'[data] note: {stats["replaced_bytes"]} non-UTF-8 bytes in the source were '
        'replaced by U+FFFD')
  return PreparedData(root=root, tokenizer=tokenizer, tokenizer_path=tok_dir,
                      packed_path=packed_dir, seq_len=seq_len, stats=stats, docs_dir=docs_dir)


def _build_documents(cfg: Any, identity: dict[str, Any], docs_dir: pathlib.Path, log: Log) -> None:
  start = time.perf_counter()
  counts = {'replaced_bytes': 0}
  first = [True]

  def documents() -> Iterator[sources.Document]:  # the source, streamed (once per pass)
    count = counts if first[0] else None
    first[0] = False
    return sources.stream(cfg, count)

  splits = split.stream_splits(documents, cfg.split, cfg.val_fraction)
  stats: dict[str, Any] = {'replaced_bytes': counts['replaced_bytes']}

  def counted(name: str) -> Callable[[], Iterator[sources.Document]]:
    def gen() -> Iterator[sources.Document]:
      docs = chars = nbytes = 0
      for d in splits[name]():
        docs, chars, nbytes = docs + 1, chars + len(d.text), nbytes + len(d.text.encode('utf-8'))
        yield d
      stats.update({f'{name}_docs': docs, f'{name}_chars': chars, f'{name}_bytes': nbytes})
    return gen
  with cache.atomic_dir(docs_dir) as tmp:
    store.write({name: counted(name) for name in split.SPLITS}, tmp)
    stats = {k: stats[k] for k in ['replaced_bytes'] + [
        f'{n}_{f}' for n in split.SPLITS for f in ('docs', 'chars', 'bytes')]}
    cache.write_json(tmp / 'meta.json', {'identity': identity, 'stats': stats})
  log(f'[data] read {stats["train_docs"] + stats["validation_docs"]} documents '
      f'({(stats["train_chars"] + stats["validation_chars"]) / 1e6:.1f}M chars, '
      f'{stats["replaced_bytes"]} non-UTF-8 bytes replaced) from {sources.label(cfg)}; '
      f'{cfg.split} split: {stats["train_docs"]} train / {stats["validation_docs"]} validation; '
      f'written as TFDS ArrayRecord in {time.perf_counter() - start:.1f}s')


def _build_packed(tokenizer: Tokenizer, docs_dir: pathlib.Path, packed_dir: pathlib.Path,
                  seq_len: int, log: Log, train_stride: int = 0, train_shards: int = 0) -> None:
  start = time.perf_counter()
  meta: dict[str, Any] = {}
  rows_per_shard = max(1, ROWS_PER_SHARD_BYTES // (8 * (seq_len + 1)))
  with cache.atomic_dir(packed_dir) as tmp:
    for name in split.SPLITS:
      texts = store.TextSource(docs_dir, name)
      counts = {'docs': 0, 'tokens': 0, 'bytes': 0, 'unk': 0}
      unk_id = getattr(tokenizer, 'unk_id', None)

      def token_arrays(texts=texts, counts=counts, unk_id=unk_id) -> Iterator[np.ndarray]:
        order = packing.document_order(len(texts))
        for b in range(0, len(order), PACK_BATCH_DOCS):
          batch = [texts[int(i)] for i in order[b:b + PACK_BATCH_DOCS]]
          ids = tokenizer.encode_batch(batch)
          counts['docs'] += len(ids)
          counts['tokens'] += sum(len(x) + 2 for x in ids)
          counts['bytes'] += sum(len(t.encode('utf-8')) for t in batch)
          if unk_id is not None:
            counts['unk'] += int(sum(int(np.sum(x == unk_id)) for x in ids))
          yield from ids

      writer = (packing.RoundRobinWriter(tmp, name, train_shards)
                if name == 'train' and train_shards else
                packing.ShardWriter(tmp, name, rows_per_shard))
      for tokens_NL, segments_NL in packing.pack_stream(
          token_arrays(), seq_len, tokenizer.bos_id, tokenizer.eos_id,
          stride=train_stride if name == 'train' else 0):
        writer.write(tokens_NL, segments_NL)
      shards = writer.close()
      num_tokens = counts['tokens']
      if num_tokens < seq_len + 1:
        raise DataError(f'the {name} split has {num_tokens} tokens, fewer than one row of '
                        f'seq_len + 1 = {seq_len + 1}; raise data.val_fraction or lower '
                        'data.seq_len')
      meta[f'{name}_tokens'] = num_tokens
      meta[f'{name}_rows'] = writer.rows
      meta[f'{name}_shards'] = shards
      if isinstance(writer, packing.RoundRobinWriter):
        meta['train_order'] = 'shards'
        meta['train_shard_rows'] = writer.shard_rows()
      meta[f'{name}_bytes_per_token'] = round(
          counts['bytes'] / max(1, num_tokens - 2 * counts['docs']), 4)
      if unk_id is not None:
        meta[f'{name}_unk_tokens'] = counts['unk']
    cache.write_json(tmp / 'meta.json', meta)
  log(f'[data] tokenized and packed into rows of {seq_len + 1} tokens in '
      f'{time.perf_counter() - start:.1f}s: train {meta["train_rows"]} rows in '
      f'{len(meta["train_shards"])} shard(s), validation {meta["validation_rows"]} rows '
      f'({meta["train_bytes_per_token"]} bytes/token)')
