"""prepare(): source -> TFDS ArrayRecord documents -> tokenizer -> packed rows, cached.

Cache layout, each entry built in a temp dir and renamed into place (lm/data/cache.py):

  <cache_dir>/<source>-<hash of source config>/
    documents/                     TFDS data_dir: lm_documents/1.0.0/*.array_record, + meta.json
    tokenizer-<tok key>/           tokenizer.json (+ spm.model | chars.json)
    packed-<tok key>-<seq_len>/    {train,validation}.array_record, meta.json

A second call with the same config only stats the source files and reads meta.json.
"""

import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lm.data import cache, loader, packing, sources, split, store, tokenizers
from lm.data.errors import DataError
from lm.data.tokenizers import Tokenizer

FORMAT = 1  # bump when the on-disk layout changes, so old caches are not reused
Log = Callable[[str], None]


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
    self._val_texts: list[str] | None = None

  def split_path(self, split_name: str) -> pathlib.Path:
    if split_name not in split.SPLITS:
      raise DataError(f'split {split_name!r}: expected one of {split.SPLITS}')
    return self.packed_path / f'{split_name}.array_record'

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> loader.TrainIterator:
    """Endless shuffled training batches for this process (see lm/data/loader.py)."""
    return loader.TrainIterator(self.split_path('train'), batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count)

  def eval_batches(self, batch_size: int, num_batches: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The same validation batches on every call (no shuffle)."""
    return loader.eval_batches(self.split_path('validation'), batch_size=batch_size,
                               num_batches=num_batches, process_index=process_index,
                               process_count=process_count)

  def val_text_sample(self, num_chars: int) -> str:
    """The first `num_chars` characters of the validation text (documents in order)."""
    if self._val_texts is None:
      self._val_texts = store.read_texts(self.docs_dir, 'validation')
    out, n = [], 0
    for text in self._val_texts:
      if n >= num_chars:
        break
      out.append(text[:num_chars - n])
      n += len(out[-1])
    return ''.join(out)

  def rows(self, split_name: str) -> np.ndarray:
    """[N, 2, seq_len + 1] int32: every packed row (tokens, segments) in stored order."""
    return loader.read_all(self.split_path(split_name))


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
      tokenizers.train(data_cfg.tokenizer, store.read_texts(docs_dir, 'train'), tmp, log)
    log(f'[data] tokenizer {tok_key} built in {time.perf_counter() - start:.1f}s')
  tokenizer = tokenizers.load(tok_dir)

  stride = data_cfg.get('train_row_stride', 0)
  packed_dir = root / f'packed-{tok_key}-{seq_len}' if not stride else (
      root / f'packed-{tok_key}-{seq_len}-stride{stride}')
  if not packed_dir.is_dir():
    _build_packed(tokenizer, docs_dir, packed_dir, seq_len, log, stride)
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
  corpus = sources.read(cfg)
  splits = split.split_documents(corpus.documents, cfg.split, cfg.val_fraction)
  stats: dict[str, Any] = {'replaced_bytes': corpus.replaced_bytes}
  for name, docs in splits.items():
    stats[f'{name}_docs'] = len(docs)
    stats[f'{name}_chars'] = sum(len(d.text) for d in docs)
    stats[f'{name}_bytes'] = sum(len(d.text.encode('utf-8')) for d in docs)
  with cache.atomic_dir(docs_dir) as tmp:
    store.write(splits, tmp)
    cache.write_json(tmp / 'meta.json', {'identity': identity, 'stats': stats})
  log(f'[data] read {len(corpus.documents)} documents '
      f'({(stats["train_chars"] + stats["validation_chars"]) / 1e6:.1f}M chars, '
      f'{corpus.replaced_bytes} non-UTF-8 bytes replaced) from {sources.label(cfg)}; '
      f'{cfg.split} split: {stats["train_docs"]} train / {stats["validation_docs"]} validation; '
      f'written as TFDS ArrayRecord in {time.perf_counter() - start:.1f}s')


def _build_packed(tokenizer: Tokenizer, docs_dir: pathlib.Path, packed_dir: pathlib.Path,
                  seq_len: int, log: Log, train_stride: int = 0) -> None:
  start = time.perf_counter()
  meta: dict[str, Any] = {}
  with cache.atomic_dir(packed_dir) as tmp:
    for name in split.SPLITS:
      texts = store.read_texts(docs_dir, name)
      ids = tokenizer.encode_batch(texts)
      order = packing.document_order(len(ids))
      tokens_NL, segments_NL = packing.pack([ids[i] for i in order], seq_len,
                                            tokenizer.bos_id, tokenizer.eos_id,
                                            stride=train_stride if name == 'train' else 0)
      num_tokens = sum(len(x) + 2 for x in ids)
      if num_tokens < seq_len + 1:
        raise DataError(f'the {name} split has {num_tokens} tokens, fewer than one row of '
                        f'seq_len + 1 = {seq_len + 1}; raise data.val_fraction or lower '
                        'data.seq_len')
      packing.write_rows(tmp / f'{name}.array_record', tokens_NL, segments_NL)
      num_bytes = sum(len(t.encode('utf-8')) for t in texts)
      meta[f'{name}_tokens'] = num_tokens
      meta[f'{name}_rows'] = len(tokens_NL)
      meta[f'{name}_bytes_per_token'] = round(num_bytes / max(1, num_tokens - 2 * len(ids)), 4)
      if getattr(tokenizer, 'unk_id', None) is not None:
        meta[f'{name}_unk_tokens'] = int(sum(int(np.sum(x == tokenizer.unk_id)) for x in ids))
    cache.write_json(tmp / 'meta.json', meta)
  log(f'[data] tokenized and packed into rows of {seq_len + 1} tokens in '
      f'{time.perf_counter() - start:.1f}s: train {meta["train_rows"]} rows, validation '
      f'{meta["validation_rows"]} rows ({meta["train_bytes_per_token"]} bytes/token)')
