"""A mixture of sources, each one domain: `data.mixture = ((name, source, weight), ...)`.

Each domain is read, split into train/validation and packed on its own (so a packed row
holds one domain), with one tokenizer trained on all domains' training text. Batches
carry `domains` [B, T]: the domain id (the triple's index) of every token.

Training rows: for batch n the domain of every global row is drawn with the weights from
a generator seeded by (seed, n), and the row uniformly from that domain's rows (with
replacement), so the iterator's whole state is n. Process p of P takes rows p, p+P, ...
of the global batch, as the single-source loader does.

Cache: <cache_dir>/mixture-<hash>/ {tokenizer/, <d>-documents/ (TFDS ArrayRecord),
<d>-packed/ ({train,validation}-NNNNN.array_record shards, meta.json), meta.json}, d the
domain's index. Preparation streams as the single-source path does (lm/data/prepare.py):
each domain is read a document at a time, split in one counting pass, written to its TFDS
store, the tokenizer trained on a stream of every domain's training text, and each split
packed by prepare._build_packed; the iterators read rows by random access, so no step
holds a domain in memory. The rows are those the in-memory code packed (test_domains).
"""

from __future__ import annotations

import itertools
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np

from lm.data import cache, domains, loader, packing, sources, split, store, tokenizers
from lm.data.errors import DataError
from lm.data.prepare import _build_packed, prepare

FORMAT = 2  # 2: ArrayRecord shards per domain (1: in-memory .npz)
Log = Callable[[str], None]
STDLIB_PARTS = {'stdlib:code': 'code', 'stdlib:prose': 'prose'}


def prepare_data(data_cfg: Any, seq_len: int | None = None, log: Log = print):
  """`prepare` for a single source, `prepare_mixture` when `data.mixture` is set."""
  if data_cfg.get('mixture'):
    return prepare_mixture(data_cfg, seq_len, log)
  return prepare(data_cfg, seq_len=seq_len, log=log)


def _source_cfg(data_cfg: Any, source: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  if source.startswith('stdlib'):
    cfg.source = 'stdlib'
  else:
    cfg.source, cfg.path = 'text', source
  return cfg


def stream_domain(data_cfg: Any, source: str) -> Callable[[], Iterator[sources.Document]]:
  """A function streaming the documents of one mixture source (at most data.max_docs
  files), a fresh pass per call."""
  if source not in ('stdlib', *STDLIB_PARTS) and source.startswith('stdlib'):
    raise DataError(f"data.mixture source {source!r}: expected 'stdlib', 'stdlib:code', "
                    "'stdlib:prose' or a text file path")
  cfg = _source_cfg(data_cfg, source)

  def docs() -> Iterator[sources.Document]:
    for doc in sources.stream(cfg):
      if source in STDLIB_PARTS:
        yield from domains.split_documents([doc], STDLIB_PARTS[source])
      else:
        yield doc
  return docs


def read_domain(data_cfg: Any, source: str) -> list[sources.Document]:
  """The documents of one mixture source (at most data.max_docs files), in memory."""
  docs = list(stream_domain(data_cfg, source)())
  if not docs:
    raise DataError(f'data.mixture source {source!r} has no text')
  return docs


class MixtureData:
  """A prepared mixture: the shared tokenizer, per-domain rows, loaders (PreparedData's API)."""

  def __init__(self, root: pathlib.Path, names: list[str], weights: list[float], seq_len: int):
    self.root = root
    self.names = names
    self.weights = np.asarray(weights, np.float64) / np.sum(weights)
    self.seq_len = seq_len
    self.tokenizer_path = root / 'tokenizer'
    self.packed_path = root
    self.tokenizer = tokenizers.load(self.tokenizer_path)
    self.meta = cache.read_json(root / 'meta.json')
    self.stats = self.meta['stats']

  def split_paths(self, split_name: str, domain: int = 0) -> list[pathlib.Path]:
    """The ArrayRecord shards of one domain's packed split, in row order."""
    packed = self.root / f'{domain}-packed'
    return [packed / n for n in self.stats[self.names[domain]][f'{split_name}_shards']]

  def source(self, split_name: str, domain: int = 0):
    """One domain's packed split by random access (loader._source: only the index is read
    on opening; a row when it is asked for)."""
    return loader._source(self.split_paths(split_name, domain))  # pylint: disable=protected-access

  def rows(self, split_name: str, domain: int = 0) -> np.ndarray:
    """[N, 2, seq_len + 1] every packed row (tokens, segments) of one domain's split."""
    return loader.read_all(self.split_paths(split_name, domain))

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> MixtureIterator:
    return MixtureIterator(self, batch_size=batch_size, seed=seed, process_index=process_index,
                           process_count=process_count)

  def eval_batches(self, batch_size: int, num_batches: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """Validation batches with an equal share of rows from every domain, each domain's
    rows spread evenly over its split (wrapping when it has fewer)."""
    global_batch = batch_size * process_count
    total = max(1, num_batches) * global_batch
    per = [total // len(self.names) + (d < total % len(self.names))
           for d in range(len(self.names))]
    rows, dom = [], []
    for d, n in enumerate(per):
      val = self.source('validation', d)
      idx = (np.arange(n) * len(val)) // max(n, 1) if len(val) >= n else np.arange(n) % len(val)
      rows.append(np.stack([packing.parse_row(val[int(i)]) for i in idx])
                  if n else np.zeros((0, 2, self.seq_len + 1), np.int32))
      dom.append(np.full(n, d, np.int32))
    rows_N2L, dom_N = np.concatenate(rows), np.concatenate(dom)
    mine = slice(process_index, None, process_count)
    rows_N2L, dom_N = rows_N2L[mine], dom_N[mine]
    return [_batch(rows_N2L[b * batch_size:(b + 1) * batch_size],
                   dom_N[b * batch_size:(b + 1) * batch_size])
            for b in range(len(rows_N2L) // batch_size)]

  def val_text_sample(self, num_chars: int) -> str:
    return self.meta['val_text_sample'][:num_chars]


def _batch(rows_B2L: np.ndarray, domain_B: np.ndarray) -> dict[str, np.ndarray]:
  batch = packing.rows_to_batch(rows_B2L)
  batch['domains'] = np.broadcast_to(domain_B[:, None], batch['inputs'].shape).astype(np.int32)
  return batch


class MixtureIterator:
  """Endless training batches of the mixture; the state is the batch counter."""

  def __init__(self, data: MixtureData, *, batch_size: int, seed: int, process_index: int,
               process_count: int):
    if batch_size < 1 or not 0 <= process_index < process_count:
      raise DataError(f'batch_size={batch_size}, process {process_index} of {process_count}: '
                      'need batch_size >= 1 and 0 <= process_index < process_count')
    self.data = data
    self.batch_size, self.seed = batch_size, int(seed)
    self.process_index, self.process_count = process_index, process_count
    self.step = 0
    self._train = [data.source('train', d) for d in range(len(data.names))]
    self._pipeline = {'seed': self.seed, 'batch_size': batch_size, 'process_count': process_count,
                      'domains': list(data.names), 'rows': [len(r) for r in self._train]}

  def __iter__(self) -> MixtureIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.step])
    n = self.batch_size * self.process_count
    domain_N = rng.choice(len(self._train), size=n, p=self.data.weights)
    pick_N = rng.random(n)
    self.step += 1
    mine = range(self.process_index, n, self.process_count)
    rows = [packing.parse_row(
        self._train[domain_N[i]][int(pick_N[i] * len(self._train[domain_N[i]]))]) for i in mine]
    return _batch(np.stack(rows), domain_N[self.process_index::self.process_count])

  def get_state(self) -> dict[str, Any]:
    return {'pipeline': dict(self._pipeline), 'step': self.step}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('pipeline') != self._pipeline:
      raise DataError(f'data iterator state is for {state.get("pipeline")}, this iterator is '
                      f'{self._pipeline}; resume with the same seed, batch size, process '
                      'count and data.mixture')
    self.step = int(state['step'])


def prepare_mixture(data_cfg: Any, seq_len: int | None = None, log: Log = print) -> MixtureData:
  """Prepares (or reuses from the cache) the mixture `data_cfg.mixture` describes."""
  seq_len = data_cfg.seq_len if seq_len is None else int(seq_len)
  entries = [tuple(e) for e in data_cfg.mixture]
  names, srcs, weights = ([e[i] for e in entries] for i in range(3))
  identity = {'format': FORMAT, 'split': data_cfg.split, 'val_fraction': data_cfg.val_fraction,
              'max_docs': data_cfg.max_docs, 'jsonl_field': data_cfg.jsonl_field,
              'tokenizer': tokenizers.key(data_cfg.tokenizer), 'seq_len': seq_len,
              'stride': data_cfg.get('train_row_stride', 0),
              'sources': [[n, sources.describe(_source_cfg(data_cfg, s))]
                          for n, s in zip(names, srcs, strict=True)]}
  root = cache.cache_root(data_cfg.cache_dir) / f'mixture-{cache.short_hash(identity)}'
  if not root.is_dir():
    _build(data_cfg, names, srcs, seq_len, identity, root, log)
  data = MixtureData(root, names, weights, seq_len)
  log('[data] mixture: ' + '; '.join(
      f'{n} (weight {w:.2f}): {data.stats[n]["train_rows"]} train / '
      f'{data.stats[n]["validation_rows"]} validation rows'
      for n, w in zip(names, data.weights, strict=True)) + f'; cached in {root}')
  return data


def _build(data_cfg: Any, names: list[str], srcs: list[str], seq_len: int,
           identity: dict, root: pathlib.Path, log: Log) -> None:
  start = time.perf_counter()
  stride = data_cfg.get('train_row_stride', 0)
  stats: dict[str, Any] = {name: {} for name in names}
  quiet: Log = lambda _: None  # noqa: E731
  with cache.atomic_dir(root) as tmp:
    for d, (name, src) in enumerate(zip(names, srcs, strict=True)):
      docs = stream_domain(data_cfg, src)
      num_docs = sum(1 for _ in docs())
      if not num_docs:
        raise DataError(f'data.mixture source {src!r} has no text')
      # A one-document source (a single text file) can only be split by its tail.
      method = 'tail' if num_docs < 2 else data_cfg.split
      splits = split.stream_splits(docs, method, data_cfg.val_fraction)

      def counted(split_name: str, splits=splits, st=stats[name]):
        def gen() -> Iterator[sources.Document]:
          n = nbytes = 0
          for doc in splits[split_name]():
            n, nbytes = n + 1, nbytes + len(doc.text.encode('utf-8'))
            yield doc
          st[f'{split_name}_docs'], st[f'{split_name}_bytes'] = n, nbytes
        return gen
      store.write({sn: counted(sn) for sn in split.SPLITS}, tmp / f'{d}-documents')
    (tmp / 'tokenizer').mkdir()
    tokenizers.train(data_cfg.tokenizer, lambda: itertools.chain.from_iterable(
        store.iter_texts(tmp / f'{d}-documents', 'train') for d in range(len(names))),
        tmp / 'tokenizer', log)
    tok = tokenizers.load(tmp / 'tokenizer')
    for d, name in enumerate(names):
      try:
        _build_packed(tok, tmp / f'{d}-documents', tmp / f'{d}-packed', seq_len, quiet, stride)
      except DataError as e:
        raise DataError(f'data.mixture domain {name!r}: {e}') from None
      packed = cache.read_json(tmp / f'{d}-packed' / 'meta.json')
      for split_name in split.SPLITS:
        for key in ('rows', 'tokens', 'shards'):
          stats[name][f'{split_name}_{key}'] = packed[f'{split_name}_{key}']
    sample = next(iter(store.iter_texts(tmp / '0-documents', 'validation')))[:4096]
    cache.write_json(tmp / 'meta.json', {'identity': identity, 'stats': stats,
                                         'val_text_sample': sample})
  log(f'[data] mixture of {len(names)} domains prepared in {time.perf_counter() - start:.1f}s')
