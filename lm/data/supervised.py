"""Fine-tuning data: SFT prompt/response (or chat) records and text/label records.

    data = prepare(config.data, seq_len=..., tokenizer=None | the base model's tokenizer)

Records come from JSONL files (data.source='text', data.path) or are generated from the
stdlib (data.source='stdlib', lm/data/examples.py; cached as JSONL). The split is by a
hash of each record's name (its file:line), like documents.

sft       {"prompt": str, "response": str} or {"messages": [{"role", "content"}, ...]}.
          Each record is [bos] prompt response [eos]; only response tokens (and the eos
          after a response) carry loss. Records are packed whole into rows of seq_len + 1
          tokens (one that is longer is truncated), so a row's `weights` are 1 exactly on
          targets that are response tokens of the same record.
classify  {"text": str, "label": str | int}; one record per row: [bos] text [eos]
          (text truncated to fit), padded; `lengths` and `labels` per row.

Chat template (role markers are plain text, so every tokenizer encodes them):
    <|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n... <|end|>\\n
with loss on each assistant message's content and its <|end|>.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from lm.data import cache, examples, loader, packing, sources, split, tokenizers
from lm.data.errors import DataError
from lm.data.tokenizers import Tokenizer

Log = Callable[[str], None]
END_OF_TURN = '<|end|>'


# ---- records ------------------------------------------------------------------------------


def read_records(cfg: Any, log: Log = print) -> list[dict]:
  """The records of `cfg.format` ('sft' | 'classify'), from JSONL or generated (cached)."""
  make = examples.sft_records if cfg.format == 'sft' else examples.classify_records
  return jsonl_records(cfg, generate=make,
                       check=lambda record, where: _check_record(record, cfg.format, where),
                       log=log)


def jsonl_records(cfg: Any, *, generate: Callable[[int], list[dict]],
                  check: Callable[[Any, str], None], min_records: int = 1,
                  log: Log = print) -> list[dict]:
  """The JSON records of data.format=`cfg.format` in file order (up to data.max_docs): the
  .jsonl files at data.path (source='text'), or `generate(max_docs)` written once into the
  data cache (source='stdlib'). `check(record, 'file:line')` raises on a bad record; a
  record without 'name' is named 'file:line'."""
  fmt = cfg.format
  if cfg.source == 'stdlib':
    root = cache.cache_root(cfg.cache_dir) / f'examples-{fmt}-{cfg.max_docs}'
    path = root / 'records.jsonl'
    if not path.is_file():
      with cache.atomic_dir(root) as tmp:
        records = generate(cfg.max_docs)
        (tmp / 'records.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
      log(f'[data] generated {len(records)} {fmt} records from the stdlib into {path}')
    files = [('records.jsonl', path)]
  elif cfg.source == 'text':
    files = sources.text_files(cfg.path)
  else:
    raise DataError(f"data.format={fmt!r} needs data.source='text' (JSONL at data.path) "
                    "or 'stdlib' (generated records)")
  records = []
  for rel, path in files:
    if path.suffix != '.jsonl':
      raise DataError(f'{path}: data.format={fmt!r} reads .jsonl files (one JSON record '
                      'per line); point data.path at .jsonl files')
    text, _ = sources.decode_utf8(path.read_bytes())
    for lineno, line in enumerate(text.split('\n'), start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path}:{lineno}: not valid JSON ({e.msg}); each line must be one '
                        'JSON object') from None
      check(record, f'{path}:{lineno}')
      records.append({**record, 'name': record.get('name') or f'{rel}:{lineno}'})
      if cfg.max_docs and len(records) >= cfg.max_docs:
        return records
  if len(records) < min_records:
    why = ' (a train/validation split)' if min_records > 1 else ''
    raise DataError(f'{files[0][1] if files else cfg.path}: {len(records)} record(s); '
                    f'data.format={fmt!r} needs at least {min_records}{why}, one JSON object '
                    'per line')
  return records


def _check_record(record: Any, fmt: str, where: str) -> None:
  def need_str(key: str, obj: dict) -> None:
    if not isinstance(obj.get(key), str):
      raise DataError(f'{where}: field {key!r} must be a string (got '
                      f'{type(obj.get(key)).__name__})')
  if not isinstance(record, dict):
    raise DataError(f'{where}: a record must be a JSON object')
  if fmt == 'classify':
    need_str('text', record)
    if not isinstance(record.get('label'), (str, int)) or isinstance(record.get('label'), bool):
      raise DataError(f"{where}: field 'label' must be a string or an integer class id")
  elif 'messages' in record:
    msgs = record['messages']
    if not isinstance(msgs, list) or not msgs:
      raise DataError(f"{where}: field 'messages' must be a non-empty list of "
                      '{"role": ..., "content": ...} objects')
    for i, m in enumerate(msgs):
      if not isinstance(m, dict):
        raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
      need_str('role', m)
      need_str('content', m)
    if not any(m['role'] == 'assistant' for m in msgs):
      raise DataError(f"{where}: no message has role 'assistant', so nothing would be trained")
  else:
    if 'prompt' not in record or 'response' not in record:
      raise DataError(f"{where}: an sft record needs 'prompt' and 'response' (or 'messages')")
    need_str('prompt', record)
    need_str('response', record)


def sft_pieces(record: dict) -> list[tuple[str, bool]]:
  """(text, trained) pieces of one sft record, in order (the chat template for messages)."""
  if 'messages' not in record:
    return [(record['prompt'], False), (record['response'], True)]
  pieces = []
  for m in record['messages']:
    if m['role'] == 'assistant':
      pieces += [('<|assistant|>\n', False), (m['content'] + END_OF_TURN, True), ('\n', False)]
    else:
      pieces.append((f"<|{m['role']}|>\n{m['content']}\n", False))
  return pieces


def encode_sft(tokenizer: Tokenizer, record: dict) -> tuple[np.ndarray, np.ndarray]:
  """tokens_S and trained_S (0/1) of [bos] pieces [eos]; eos is trained after a response."""
  pieces = sft_pieces(record)
  ids = [np.asarray([tokenizer.bos_id], np.int32)]
  trained = [np.zeros(1, np.int32)]
  for text, is_trained in pieces:
    piece = np.asarray(tokenizer.encode(text), np.int32)
    ids.append(piece)
    trained.append(np.full(len(piece), int(is_trained), np.int32))
  last_trained = any(t for _, t in pieces[-2:]) if 'messages' in record else True
  ids.append(np.asarray([tokenizer.eos_id], np.int32))
  trained.append(np.asarray([int(last_trained)], np.int32))
  return np.concatenate(ids), np.concatenate(trained)


# ---- rows ---------------------------------------------------------------------------------


def pack_sft(encoded: list[tuple[np.ndarray, np.ndarray]], seq_len: int
             ) -> tuple[np.ndarray, int]:
  """rows_N3L (tokens, segments, trained) with whole records per row; truncated count."""
  row_len = seq_len + 1
  rows: list[np.ndarray] = []
  row = np.zeros((3, row_len), np.int32)
  used, segment, truncated = 0, 0, 0
  for tokens_S, trained_S in encoded:
    if len(tokens_S) > row_len:
      tokens_S, trained_S = tokens_S[:row_len], trained_S[:row_len]
      truncated += 1
    if used + len(tokens_S) > row_len:
      rows.append(row)
      row = np.zeros((3, row_len), np.int32)
      used, segment = 0, 0
    segment += 1
    span = slice(used, used + len(tokens_S))
    row[0, span], row[1, span], row[2, span] = tokens_S, segment, trained_S
    used += len(tokens_S)
  if used:
    rows.append(row)
  return np.stack(rows), truncated


def sft_batch(rows_B3L: np.ndarray) -> dict[str, np.ndarray]:
  """Model inputs of packed sft rows: the lm batch with `weights` on trained targets only."""
  batch = packing.rows_to_batch(rows_B3L[:, :2])
  batch['weights'] = batch['weights'] * (rows_B3L[:, 2, 1:] > 0)
  return batch


def classify_rows(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, int]:
  """tokens_NT of [bos] text [eos] per row (text truncated to fit), 0-padded; truncations."""
  rows = np.zeros((len(texts), seq_len), np.int32)
  truncated = 0
  for i, ids in enumerate(tokenizer.encode_batch(texts)):
    if len(ids) > seq_len - 2:
      ids, truncated = ids[:seq_len - 2], truncated + 1
    rows[i, :len(ids) + 2] = [tokenizer.bos_id, *ids, tokenizer.eos_id]
  return rows, truncated


def classify_batch(tokens_BT: np.ndarray, labels_B: np.ndarray) -> dict[str, np.ndarray]:
  """Model inputs of one example per row (0 = padding; a row of zeros has length 0)."""
  lengths_B = np.sum(tokens_BT != 0, axis=1).astype(np.int32)
  real_BT = np.arange(tokens_BT.shape[1])[None, :] < lengths_B[:, None]
  positions_BT = np.where(real_BT, np.arange(tokens_BT.shape[1], dtype=np.int32), 0)
  return {'inputs': tokens_BT.astype(np.int32), 'positions': positions_BT.astype(np.int32),
          'segment_ids': real_BT.astype(np.int32), 'lengths': lengths_B,
          'labels': labels_B.astype(np.int32)}


# ---- loaders ------------------------------------------------------------------------------


class SupervisedData:
  """Prepared sft/classify data with PreparedData's interface (what the Trainer uses)."""

  def __init__(self, *, fmt: str, tokenizer: Tokenizer, seq_len: int, train: dict,
               validation: dict, label_names: list[str], stats: dict[str, Any],
               prompts: list[str]):
    self.format, self.tokenizer, self.seq_len = fmt, tokenizer, seq_len
    self._splits = {'train': train, 'validation': validation}
    self.label_names = label_names  # classify: class id -> label
    self.stats = stats
    self._prompts = prompts  # sft: validation prompts (for the end-of-run sample)

  def _num_rows(self, name: str) -> int:
    return len(self._splits[name]['rows'])

  def _batch(self, name: str, index_B: np.ndarray) -> dict[str, np.ndarray]:
    s = self._splits[name]
    pad_B = index_B < 0  # eval padding rows: all zero, weight 0
    index_B = np.where(pad_B, 0, index_B)
    rows = s['rows'][index_B].copy()
    rows[pad_B] = 0
    if self.format == 'sft':
      return sft_batch(rows)
    return classify_batch(rows, np.where(pad_B, 0, s['labels'][index_B]))

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> loader.IndexBatchIterator:
    return loader.IndexBatchIterator(
        self._num_rows('train'), lambda i: self._batch('train', i), batch_size=batch_size,
        seed=seed, process_index=process_index, process_count=process_count)

  def eval_batches(self, batch_size: int, num_batches: int, process_index: int = 0,
                   process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """Up to `num_batches` batches covering the validation rows (spread evenly when there
    are more); missing rows are padding with weight 0, so every row counts once."""
    n_rows = self._num_rows('validation')
    global_batch = batch_size * process_count
    n = max(1, min(num_batches, -(-n_rows // global_batch)))
    total = n * global_batch
    picked_N = ((np.arange(total) * n_rows) // total if n_rows > total else
                np.where(np.arange(total) < n_rows, np.arange(total), -1))
    mine_N = picked_N[process_index::process_count]
    return [self._batch('validation', mine_N[b * batch_size:(b + 1) * batch_size])
            for b in range(n)]

  def val_text_sample(self, num_chars: int) -> str:
    """sft: the first validation prompt (the end-of-run sample continues it)."""
    return self._prompts[0][:num_chars] if self._prompts else ''


def prepare(cfg: Any, seq_len: int | None = None, tokenizer: Tokenizer | None = None,
            log: Log = print) -> SupervisedData:
  """Reads, splits, tokenizes and lays out the records `cfg` (config.data) describes.

  `tokenizer` is the base model's when fine-tuning from init_from; otherwise one is built
  from the training records as data.tokenizer describes (cached like the text pipeline's).
  """
  seq_len = cfg.seq_len if seq_len is None else int(seq_len)
  if cfg.format not in ('sft', 'classify'):
    raise DataError(f"data.format={cfg.format!r}: lm.data.supervised reads 'sft' or 'classify'")
  records = read_records(cfg, log)
  units = [split.hash_unit(r['name']) for r in records]
  is_val = [u < cfg.val_fraction for u in units]
  if len(records) < 2:
    raise DataError(f'{len(records)} record(s): a train/validation split needs at least 2')
  if not any(is_val):
    is_val[int(np.argmin(units))] = True
  if all(is_val):
    is_val[int(np.argmax(units))] = False
  parts = {'train': [r for r, v in zip(records, is_val, strict=True) if not v],
           'validation': [r for r, v in zip(records, is_val, strict=True) if v]}
  if tokenizer is None:
    tokenizer = _tokenizer(cfg, parts['train'], log)
  stats: dict[str, Any] = {'vocab_size': tokenizer.vocab_size, 'seq_len': seq_len}
  splits: dict[str, dict] = {}
  label_names: list[str] = []
  prompts: list[str] = []
  if cfg.format == 'sft':
    for name, recs in parts.items():
      rows, truncated = pack_sft([encode_sft(tokenizer, r) for r in recs], seq_len)
      splits[name] = {'rows': rows}
      stats[f'{name}_records'], stats[f'{name}_rows'] = len(recs), len(rows)
      stats[f'{name}_truncated'] = truncated
      stats[f'{name}_trained_tokens'] = int(sft_batch(rows)['weights'].sum())
      if not stats[f'{name}_trained_tokens']:
        raise DataError(f'the {name} split has no response tokens left after truncation to '
                        f'data.seq_len={seq_len}; raise data.seq_len or shorten the prompts')
    prompts = [''.join(t for t, trained in sft_pieces(r) if not trained)
               for r in parts['validation'][:1]]
  else:
    labels = sorted({r['label'] for r in records}, key=lambda x: (isinstance(x, str), x))
    label_names = [str(x) for x in labels]
    ids = {x: i for i, x in enumerate(labels)}
    for name, recs in parts.items():
      rows, truncated = classify_rows(tokenizer, [r['text'] for r in recs], seq_len)
      label_N = np.asarray([ids[r['label']] for r in recs], np.int32)
      splits[name] = {'rows': rows, 'labels': label_N}
      stats[f'{name}_records'], stats[f'{name}_rows'] = len(recs), len(rows)
      stats[f'{name}_truncated'] = truncated
      stats[f'{name}_majority'] = float(np.bincount(label_N).max() / len(label_N))
    stats['num_labels'] = len(labels)
  for name in split.SPLITS:
    if not len(splits[name]['rows']):
      raise DataError(f'the {name} split has no records; change data.val_fraction')
  log(f'[data] {cfg.format}: train {stats["train_records"]} records in {stats["train_rows"]} '
      f'rows, validation {stats["validation_records"]} in {stats["validation_rows"]} rows; '
      f'{stats["train_truncated"] + stats["validation_truncated"]} truncated to seq_len '
      f'{seq_len}' + (f'; labels {label_names}, validation majority class '
                      f'{stats["validation_majority"]:.1%}' if label_names else ''))
  return SupervisedData(fmt=cfg.format, tokenizer=tokenizer, seq_len=seq_len,
                        train=splits['train'], validation=splits['validation'],
                        label_names=label_names, stats=stats, prompts=prompts)


def record_texts(record: dict) -> str:
  """All the text of one record (what a tokenizer is trained on)."""
  if 'text' in record:
    return record['text']
  return ''.join(t for t, _ in sft_pieces(record))


def _tokenizer(cfg: Any, train_records: list[dict], log: Log) -> Tokenizer:
  texts = [record_texts(r) for r in train_records]
  key = tokenizers.key(cfg.tokenizer)
  root = cache.cache_root(cfg.cache_dir) / f'{cfg.format}-{cache.short_hash(texts)}'
  tok_dir = root / f'tokenizer-{key}'
  if not tok_dir.is_dir():
    with cache.atomic_dir(tok_dir) as tmp:
      tokenizers.train(cfg.tokenizer, texts, pathlib.Path(tmp), log)
  return tokenizers.load(tok_dir)
