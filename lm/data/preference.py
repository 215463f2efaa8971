"""Preference data (data.format='preference', train.task='dpo'): prompt, chosen, rejected.

Records (JSONL at data.path, or generated from the stdlib with data.source='stdlib'):

  {"prompt": str, "chosen": str, "rejected": str}
  {"prompt": [{"role": ..., "content": ...}, ...], "chosen": str | [messages],
   "rejected": str | [messages]}

The chat form is rendered with the sft chat template (lm/data/supervised.py): the prompt's
messages are context only (never trained, assistant turns included); a string response is
one assistant turn, <|assistant|>\\n content <|end|>\\n. Each side is one sequence
[bos] prompt response [eos] whose response tokens and eos are `trained`.

Rows: a pair is never split. Pairs are packed whole into rows of seq_len + 1 tokens; in a
row, pair k (k = 1, 2, ...) is segment 2k - 1 (chosen) followed by segment 2k (rejected),
so the loss recovers each pair from the segment ids. A pair longer than a row has each
side's response cut to fit half a row (counted as truncated); a pair whose prompt alone
leaves no room for a response token is dropped (counted).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

from lm.data import examples, split, supervised
from lm.data.errors import DataError
from lm.data.tokenizers import Tokenizer

Log = Callable[[str], None]
SNIPPET_LINES = 6  # stdlib pairs: lines of code per response


def max_pairs(seq_len: int) -> int:
  """An upper bound on the pairs in one row: each side is at least [bos] [eos]."""
  return max(1, (seq_len + 1) // 4)


# ---- records ------------------------------------------------------------------------------


def stdlib_records(limit: int = 0, *, max_chars: int = 400, lines: int = SNIPPET_LINES,
                   seed: int = 0, order: str = 'shuffle') -> list[dict]:
  """Real stdlib code (chosen) over the same lines in another order (rejected: shuffled, or
  reversed with order='reverse'), after a prompt naming the function: a difference a model
  can learn (code reads in order)."""
  limit = limit or examples.DEFAULT_LIMIT
  rng = random.Random(seed)
  out: list[dict] = []
  for name, node, _, source_lines in examples._functions():
    code = [line for line in examples._body_code(node, source_lines).split('\n')
            if line.strip()][:lines]
    if len(code) < 3 or sum(len(x) + 1 for x in code) > max_chars:
      continue
    shuffled = list(reversed(code)) if order == 'reverse' else list(code)
    while shuffled == code:
      rng.shuffle(shuffled)
    out.append({'name': name, 'prompt': f'# {node.name}\n',
                'chosen': '\n'.join(code) + '\n', 'rejected': '\n'.join(shuffled) + '\n'})
    if len(out) >= limit:
      break
  return out


def _check(record: Any, where: str) -> None:
  if not isinstance(record, dict):
    raise DataError(f'{where}: a record must be a JSON object')
  for key in ('prompt', 'chosen', 'rejected'):
    if key not in record:
      raise DataError(f"{where}: a preference record needs 'prompt', 'chosen' and 'rejected' "
                      f'(missing {key!r})')
    value = record[key]
    if isinstance(value, str):
      continue
    if not isinstance(value, list) or not value or not all(
        isinstance(m, dict) and isinstance(m.get('role'), str)
        and isinstance(m.get('content'), str) for m in value):
      raise DataError(f'{where}: field {key!r} must be a string or a non-empty list of '
                      '{"role": str, "content": str} messages')
    if key != 'prompt' and any(m['role'] != 'assistant' for m in value):
      raise DataError(f"{where}: field {key!r}: a response's messages must all have role "
                      "'assistant'")


def read_records(cfg: Any, log: Log = print) -> list[dict]:
  """The preference records `cfg` (config.data) names, in file order (up to max_docs)."""
  return supervised.jsonl_records(cfg, generate=stdlib_records, check=_check, min_records=2,
                                  log=log)


def prompt_text(record: dict) -> str:
  """The prompt as the model reads it (the chat template for messages)."""
  if isinstance(record['prompt'], str):
    return record['prompt']
  return ''.join(text for text, _ in supervised.sft_pieces({'messages': record['prompt']}))


def response_pieces(record: dict, side: str) -> list[tuple[str, bool]]:
  """(text, trained) pieces of one response: as it is after a string prompt, as assistant
  turns of the chat template after a messages prompt."""
  value = record[side]
  if isinstance(value, str) and isinstance(record['prompt'], str):
    return [(value, True)]
  messages = [{'role': 'assistant', 'content': value}] if isinstance(value, str) else value
  return supervised.sft_pieces({'messages': messages})


def encode_pair(tokenizer: Tokenizer, record: dict, row_len: int
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool] | None:
  """([(tokens_S, trained_S) chosen, rejected], truncated) or None when the prompt leaves
  no room for a response in half a row."""
  prompt = np.asarray([tokenizer.bos_id, *tokenizer.encode(prompt_text(record))], np.int32)
  half = row_len // 2
  if len(prompt) + 2 > half:
    return None
  sides, truncated = [], False
  for side in ('chosen', 'rejected'):
    ids, trained = [prompt], [np.zeros(len(prompt), np.int32)]
    for text, is_trained in response_pieces(record, side):
      piece = np.asarray(tokenizer.encode(text), np.int32)
      ids.append(piece)
      trained.append(np.full(len(piece), int(is_trained), np.int32))
    ids.append(np.asarray([tokenizer.eos_id], np.int32))
    trained.append(np.ones(1, np.int32))
    tokens_S, trained_S = np.concatenate(ids), np.concatenate(trained)
    if len(tokens_S) > half:  # keep the eos: a response cut short still ends
      tokens_S = np.concatenate([tokens_S[:half - 1], tokens_S[-1:]])
      trained_S = np.concatenate([trained_S[:half - 1], trained_S[-1:]])
      truncated = True
    sides.append((tokens_S, trained_S))
  return sides, truncated


def pack_pairs(pairs: list[list[tuple[np.ndarray, np.ndarray]]], seq_len: int) -> np.ndarray:
  """rows_N3L (tokens, segments, trained): whole pairs per row, chosen then rejected."""
  row_len = seq_len + 1
  rows: list[np.ndarray] = []
  row = np.zeros((3, row_len), np.int32)
  used, segment = 0, 0
  for pair in pairs:
    size = sum(len(t) for t, _ in pair)
    if used + size > row_len:
      rows.append(row)
      row = np.zeros((3, row_len), np.int32)
      used, segment = 0, 0
    for tokens_S, trained_S in pair:
      segment += 1
      span = slice(used, used + len(tokens_S))
      row[0, span], row[1, span], row[2, span] = tokens_S, segment, trained_S
      used += len(tokens_S)
  if used:
    rows.append(row)
  return np.stack(rows)


def preference_batch(rows_B3L: np.ndarray) -> dict[str, np.ndarray]:
  """Model inputs of packed pair rows: `weights` on response targets only; segment 2k - 1
  / 2k of a row are pair k's chosen / rejected side."""
  return supervised.sft_batch(rows_B3L)


# ---- the prepared data --------------------------------------------------------------------


class PreferenceData(supervised.SupervisedData):
  """Prepared preference pairs with the Trainer's data interface. With precomputed
  reference log-probabilities (`set_reference`), batches carry them as `ref_logps`
  [B, max_pairs, 2] (chosen, rejected) in the row's pair order."""

  def __init__(self, **kwargs):
    super().__init__(fmt='preference', label_names=[], **kwargs)
    self.num_pairs = max_pairs(self.seq_len)
    self._reference: dict[str, np.ndarray] = {}

  def rows(self, name: str) -> np.ndarray:
    """rows_N3L of split `name` ('train' | 'validation')."""
    return self._splits[name]['rows']

  def set_reference(self, name: str, ref_logps_NP2: np.ndarray) -> None:
    """Attaches the reference model's per-pair log-probabilities of split `name`."""
    if ref_logps_NP2.shape != (self._num_rows(name), self.num_pairs, 2):
      raise ValueError(f'reference log-probs {ref_logps_NP2.shape} do not match the '
                       f'{self._num_rows(name)} rows of {name}')
    self._reference[name] = np.asarray(ref_logps_NP2, np.float32)

  def _batch(self, name: str, index_B: np.ndarray) -> dict[str, np.ndarray]:
    pad_B = index_B < 0
    index_B = np.where(pad_B, 0, index_B)
    rows = self.rows(name)[index_B].copy()
    rows[pad_B] = 0
    batch = preference_batch(rows)
    if name in self._reference:
      batch['ref_logps'] = np.where(pad_B[:, None, None], 0.0,
                                    self._reference[name][index_B]).astype(np.float32)
    return batch


def prepare(cfg: Any, seq_len: int | None = None, tokenizer: Tokenizer | None = None,
            log: Log = print) -> PreferenceData:
  """Reads, splits (by hashed record name, as sft), tokenizes and packs preference pairs.
  `tokenizer` is the init_from run's; without one it is built from the training texts."""
  seq_len = cfg.seq_len if seq_len is None else int(seq_len)
  records = read_records(cfg, log)
  units = [split.hash_unit(r['name']) for r in records]
  is_val = [u < cfg.val_fraction for u in units]
  if not any(is_val):
    is_val[int(np.argmin(units))] = True
  if all(is_val):
    is_val[int(np.argmax(units))] = False
  parts = {'train': [r for r, v in zip(records, is_val, strict=True) if not v],
           'validation': [r for r, v in zip(records, is_val, strict=True) if v]}
  if tokenizer is None:
    texts = [{'text': prompt_text(r) + ''.join(t for side in ('chosen', 'rejected')
                                               for t, _ in response_pieces(r, side))}
             for r in parts['train']]
    tokenizer = supervised._tokenizer(cfg, texts, log)
  stats: dict[str, Any] = {'vocab_size': tokenizer.vocab_size, 'seq_len': seq_len}
  splits = {}
  for name, recs in parts.items():
    encoded = [encode_pair(tokenizer, r, seq_len + 1) for r in recs]
    kept = [e for e in encoded if e is not None]
    if not kept:
      raise DataError(f'the {name} split has no pair whose prompt fits half a row of '
                      f'data.seq_len={seq_len} tokens with a response; raise data.seq_len or '
                      'shorten the prompts')
    rows = pack_pairs([pair for pair, _ in kept], seq_len)
    splits[name] = {'rows': rows}
    stats[f'{name}_records'], stats[f'{name}_pairs'] = len(recs), len(kept)
    stats[f'{name}_rows'] = len(rows)
    stats[f'{name}_dropped'] = len(encoded) - len(kept)
    stats[f'{name}_truncated'] = sum(t for _, t in kept)
  log(f'[data] preference: train {stats["train_pairs"]} pairs in {stats["train_rows"]} rows, '
      f'validation {stats["validation_pairs"]} in {stats["validation_rows"]} rows; '
      f'{stats["train_truncated"] + stats["validation_truncated"]} truncated and '
      f'{stats["train_dropped"] + stats["validation_dropped"]} dropped (prompt too long) for '
      f'seq_len {seq_len}')
  prompts = [prompt_text(r) for r in parts['validation'][:1]]
  return PreferenceData(tokenizer=tokenizer, seq_len=seq_len, train=splits['train'],
                        validation=splits['validation'], stats=stats, prompts=prompts)

