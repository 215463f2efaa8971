"""A mixture of sources, each one domain: `data.mixture = ((name, source, weight), ...)`.

Each domain is read, split into train/validation and packed on its own (so a packed row
holds one domain), with one tokenizer trained on all domains' training text. Batches
carry `domains` [B, T]: the domain id (the triple's index) of every token.

Training rows: for batch n the domain of every global row is drawn with the weights from
a generator seeded by (seed, n), and the row uniformly from that domain's rows (with
replacement), so the iterator's whole state is n. Process p of P takes rows p, p+P, ...
of the global batch, as the single-source loader does.

Cache: <cache_dir>/mixture-<hash>/ {tokenizer/, <domain>-{train,validation}.npz, meta.json}.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from lm.data import cache, domains, packing, sources, split, tokenizers
from lm.data.errors import DataError
from lm.data.prepare import prepare

FORMAT = 1
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


def read_domain(data_cfg: Any, source: str) -> list[sources.Document]:
  """The documents of one mixture source (at most data.max_docs files)."""
  if source not in ('stdlib', *STDLIB_PARTS) and source.startswith('stdlib'):
    raise DataError(f"data.mixture source {source!r}: expected 'stdlib', 'stdlib:code', "
                    "'stdlib:prose' or a text file path")
  docs = sources.read(_source_cfg(data_cfg, source)).documents
  if source in STDLIB_PARTS:
    docs = domains.split_documents(docs, STDLIB_PARTS[source])
  if not docs:
    raise DataError(f'data.mixture source {source!r} has no text')
  return docs


def _split(docs: list[sources.Document], method: str, val_fraction: float):
  # A one-document source (a single text file) can only be split by its tail.
  return split.split_documents(docs, 'tail' if len(docs) < 2 else method, val_fraction)


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
    self._rows: dict[tuple[str, str], np.ndarray] = {}

  def rows(self, split_name: str, domain: int = 0) -> np.ndarray:
    """[N, 2, seq_len + 1] the packed rows (tokens, segments) of one domain's split."""
    key = (split_name, self.names[domain])
    if key not in self._rows:
      with np.load(self.root / f'{domain}-{split_name}.npz') as f:
        self._rows[key] = np.stack([f['tokens'], f['segments']], axis=1)
    return self._rows[key]

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
      val = self.rows('validation', d)
      idx = (np.arange(n) * len(val)) // max(n, 1) if len(val) >= n else np.arange(n) % len(val)
      rows.append(val[idx])
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
    self._train = [data.rows('train', d) for d in range(len(data.names))]
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
    rows = [self._train[domain_N[i]][int(pick_N[i] * len(self._train[domain_N[i]]))]
            for i in mine]
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
  splits = [_split(read_domain(data_cfg, s), data_cfg.split, data_cfg.val_fraction)
            for s in srcs]
  stride = data_cfg.get('train_row_stride', 0)
  stats: dict[str, Any] = {}
  with cache.atomic_dir(root) as tmp:
    train_texts = [d.text for sp in splits for d in sp['train']]
    (tmp / 'tokenizer').mkdir()
    tokenizers.train(data_cfg.tokenizer, train_texts, tmp / 'tokenizer', log)
    tok = tokenizers.load(tmp / 'tokenizer')
    for d, (name, sp) in enumerate(zip(names, splits, strict=True)):
      stats[name] = {}
      for split_name, docs in sp.items():
        ids = tok.encode_batch([doc.text for doc in docs])
        order = packing.document_order(len(ids))
        tokens_NL, segments_NL = packing.pack(
            [ids[i] for i in order], seq_len, tok.bos_id, tok.eos_id,
            stride=stride if split_name == 'train' else 0)
        np.savez(tmp / f'{d}-{split_name}.npz', tokens=tokens_NL, segments=segments_NL)
        stats[name][f'{split_name}_docs'] = len(docs)
        stats[name][f'{split_name}_rows'] = len(tokens_NL)
        stats[name][f'{split_name}_tokens'] = int(sum(len(x) + 2 for x in ids))
        stats[name][f'{split_name}_bytes'] = sum(len(doc.text.encode('utf-8')) for doc in docs)
    sample = splits[0]['validation'][0].text[:4096]
    cache.write_json(tmp / 'meta.json', {'identity': identity, 'stats': stats,
                                         'val_text_sample': sample})
  log(f'[data] mixture of {len(names)} domains prepared in {time.perf_counter() - start:.1f}s')
