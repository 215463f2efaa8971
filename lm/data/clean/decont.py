"""Decontamination: documents sharing a word n-gram with an evaluation example are removed.

The index is built once from the evaluation JSONL files (every string field of a record,
joined: prompt + response, text + label, ...): the 64-bit xxhash of each lower-cased word
n-gram (n = clean.decontaminate.n_grams). A record shorter than n words (but at least
min_words) is indexed whole, as a k-gram of its own length k, so a short eval example
copied verbatim is found too. datatrove's n-gram decontamination indexes lighteval tasks
only, which is why this step is ours.
"""

import json
import os
import re
from collections.abc import Iterable, Iterator

import xxhash
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from lm.data.clean.config import CleanError

_WORD = re.compile(r'\w+')


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def _grams(ws: list[str], n: int) -> Iterator[int]:
  for i in range(len(ws) - n + 1):
    yield xxhash.xxh64_intdigest(' '.join(ws[i:i + n]).encode('utf-8'))


def records(path: str) -> Iterator[str]:
  """The text of each record of an eval JSONL file: its string fields joined by spaces."""
  with open(os.path.expanduser(path), encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise CleanError(f'{path}:{lineno}: not valid JSON ({e.msg}) '
                         '(clean.decontaminate.paths must be JSONL files)') from None
      values = record.values() if isinstance(record, dict) else [record]
      yield ' '.join(v for v in values if isinstance(v, str))


def build_index(paths: Iterable[str], n: int, min_words: int) -> dict[int, set[int]]:
  """{gram length: hashes}: n-grams of long records, whole short records by length."""
  index: dict[int, set[int]] = {}
  for path in paths:
    for text in records(path):
      ws = words(text)
      if len(ws) < min_words:
        continue
      k = min(n, len(ws))
      index.setdefault(k, set()).update(_grams(ws, k))
  return index


class Decontaminate(BaseFilter):
  """Removes documents holding any indexed n-gram (reason 'eval_ngram_overlap')."""

  name = '🦠 decontaminate'

  def __init__(self, index: dict[int, set[int]], exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.index = index

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    ws = words(doc.text)
    for k, hashes in self.index.items():
      if any(h in hashes for h in _grams(ws, k)):
        return False, 'eval_ngram_overlap'
    return True
