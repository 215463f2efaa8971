"""The data section and its tokenizer subsection."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Literal

from lm.config.fields import Section, in_range, non_negative, positive
from lm.config.sections.base import frozen

MIN_SENTENCEPIECE_VOCAB = 256  # room for the special tokens and every character of a corpus
STDLIB_SOURCES = ('stdlib', 'stdlib:code', 'stdlib:prose')


@frozen
class Tokenizer(Section):
  kind: Literal['sentencepiece', 'byte', 'char', 'hf']
  model_type: Literal['bpe', 'unigram']
  vocab_size: int  # sentencepiece only
  max_train_chars: int = positive()
  path: str  # hf only: a directory holding tokenizer.json

  def problems(self) -> Iterator[str]:
    if self.kind == 'sentencepiece' and self.vocab_size < MIN_SENTENCEPIECE_VOCAB:
      yield (f'data.tokenizer.vocab_size={self.vocab_size} is too small for sentencepiece; use '
             f">= {MIN_SENTENCEPIECE_VOCAB}, or data.tokenizer.kind='byte' for a tiny vocabulary.")

  @property
  def hf_file(self) -> str:
    return os.path.join(os.path.expanduser(self.path), 'tokenizer.json')

  def file_problems(self) -> Iterator[str]:
    if self.kind == 'hf' and not os.path.isfile(self.hf_file):
      yield (f"data.tokenizer.path={self.path!r} holds no tokenizer.json, which "
             "data.tokenizer.kind='hf' needs; give the directory of a Hugging Face tokenizer "
             '(python -m lm.convert from-hf sets it up).')


@frozen
class Data(Section):
  source: Literal['stdlib', 'text', 'tfds', 'cleaned']
  path: str
  jsonl_field: str
  tfds_name: str
  tfds_text_feature: str
  tfds_split: str
  tfds_data_dir: str
  split: Literal['document', 'tail']
  val_fraction: float = in_range(0.0, 1.0, lo_inclusive=False)
  max_docs: int = non_negative(' (0: all documents)')
  cache_dir: str
  seq_len: int = positive()
  train_row_stride: int
  train_shards: int = non_negative(' (0: shards of at most 256 MiB read in one global shuffle)')
  mixture: tuple[tuple[str, str, float], ...]
  format: Literal['text', 'sft', 'classify', 'preference']
  tokenizer: Tokenizer

  def problems(self) -> Iterator[str]:
    if self.source == 'text' and not self.path:
      yield ("data.path is empty but data.source='text' needs one; give a .txt/.jsonl file, "
             "a directory or a glob (e.g. --config.data.path='corpus/*.txt').")
    if self.source == 'tfds' and not self.tfds_name:
      yield ("data.tfds_name is empty but data.source='tfds' needs a TFDS dataset name "
             '(e.g. --config.data.tfds_name=tiny_shakespeare).')
    if self.source == 'tfds' and not self.tfds_split:
      yield ("data.tfds_split is empty but data.source='tfds' reads documents from it; "
             "use e.g. 'train' or 'train[:10%]'.")
    if self.source == 'cleaned' and not self.path:
      yield ("data.path is empty but data.source='cleaned' reads the directory that "
             '`python -m lm clean` wrote (its clean.output).')
    if self.format != 'text' and self.source == 'cleaned':
      yield (f"data.format={self.format!r} reads JSONL records; data.source='cleaned' gives "
             'plain documents.')
    if self.format != 'text' and self.source == 'tfds':
      yield (f"data.format={self.format!r} reads JSONL records (data.source='text') or "
             "generates them (data.source='stdlib'); data.source='tfds' gives only plain "
             'documents.')
    if self.train_shards and (self.mixture or self.format != 'text'):
      yield (f'data.train_shards={self.train_shards} applies to a packed text corpus; '
             'data.mixture and data.format other than text read their rows in one global '
             'shuffle (set data.train_shards=0).')
    row = self.seq_len + 1  # a training row: seq_len inputs and the next token (lm/data/packing)
    if not 0 <= self.train_row_stride <= row:
      yield (f'data.train_row_stride={self.train_row_stride} must be between 0 and a row, '
             f'data.seq_len + 1 = {row} tokens (0: {row}, rows without overlap; smaller: '
             'overlapping rows); a larger stride would skip tokens of the corpus.')
    yield from self._mixture_problems()

  def _mixture_problems(self) -> Iterator[str]:
    names = set()
    for i, entry in enumerate(self.mixture):
      where = f'data.mixture[{i}]'
      if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], str) and isinstance(entry[2], (int, float))
              and not isinstance(entry[2], bool)):
        yield (f"{where}={entry!r} must be a triple (domain name, source, weight), e.g. "
               "('code', 'stdlib:code', 1.0).")
        continue
      name, source, weight = entry
      if not name or name in names:
        yield f'{where} has an empty or repeated domain name {name!r}; give each domain its own.'
      names.add(name)
      if not weight >= 0:
        yield f'{where} has weight {weight}; weights must be >= 0 (0: evaluated, not trained on).'
      if source.startswith('stdlib') and source not in STDLIB_SOURCES:
        yield (f"{where} source {source!r} is not one of 'stdlib', 'stdlib:code', "
               "'stdlib:prose' or a text file path.")
    weights = [e[2] for e in self.mixture if isinstance(e, tuple) and len(e) == 3
               and isinstance(e[2], (int, float))]
    if weights and not sum(weights) > 0:
      yield 'data.mixture weights are all 0; give at least one domain a positive weight.'

  def file_problems(self) -> Iterator[str]:
    if self.source == 'cleaned' and self.path and not os.path.isfile(
        os.path.join(os.path.expanduser(self.path), 'meta.json')):
      yield (f'data.path={self.path!r} is not a finished cleaned dataset (no meta.json); run '
             '`python -m lm clean --config.clean.output=DIR` and point data.path at DIR.')
    if self.source == 'text' and self.path and not glob.glob(os.path.expanduser(self.path)):
      yield (f'data.path={self.path!r} matches no file; give a .txt/.jsonl file, a directory '
             'or a glob that exists on this machine.')
    for i, entry in enumerate(self.mixture):
      if (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[1], str)
          and not entry[1].startswith('stdlib') and not glob.glob(os.path.expanduser(entry[1]))):
        yield (f'data.mixture[{i}] source {entry[1]!r} matches no file; give a .txt/.jsonl '
               "file, directory or glob that exists, or 'stdlib:code' / 'stdlib:prose'.")
