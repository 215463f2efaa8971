"""The `clean` config (configs/clean.py): typed like the experiment config's sections.

Every key is in configs/clean.py with a comment and typed here; `check(config)` reports
every problem at once, each naming its dotted key (`clean.minhash.hashes_per_bucket`).
`config_hash` identifies what changes the output (not `workers`, `output`, `progress`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any, Literal

import ml_collections

from lm.config import fields, keys
from lm.config.sections.base import frozen
from lm.errors import ConfigError, DataError


class CleanError(DataError):
  """An input file of the cleaning pipeline that cannot be read; the message names it."""


@frozen
class Language(fields.Section):
  enabled: bool
  languages: tuple[str, ...]
  min_score: float = fields.in_range(0.0, 1.0, lo_inclusive=True)


@frozen
class GopherQuality(fields.Section):
  enabled: bool
  min_doc_words: int
  max_doc_words: int
  min_avg_word_length: float
  max_avg_word_length: float
  max_symbol_word_ratio: float
  max_bullet_lines_ratio: float
  max_ellipsis_lines_ratio: float
  max_non_alpha_words_ratio: float
  min_stop_words: int


@frozen
class GopherRepetition(fields.Section):
  enabled: bool
  dup_line_frac: float
  dup_para_frac: float
  dup_line_char_frac: float
  dup_para_char_frac: float
  top_n_grams: tuple[tuple[int, float], ...]
  dup_n_grams: tuple[tuple[int, float], ...]


@frozen
class C4(fields.Section):
  enabled: bool
  split_paragraph: bool
  remove_citations: bool
  filter_no_terminal_punct: bool
  min_num_sentences: int
  min_words_per_line: int
  max_word_length: int
  filter_lorem_ipsum: bool
  filter_javascript: bool
  filter_curly_bracket: bool
  filter_policy: bool


@frozen
class Pii(fields.Section):
  emails: bool
  ips: bool
  phones: bool
  secrets: bool


@frozen
class MinHash(fields.Section):
  enabled: bool
  n_grams: int = fields.positive()
  num_buckets: int = fields.positive()  # bands
  hashes_per_bucket: int = fields.positive()  # rows per band
  seed: int

  @property
  def threshold(self) -> float:
    """The Jaccard similarity at which a pair becomes a candidate with probability 1/2
    (about (1/b)^(1/r) for b bands of r rows)."""
    return (1.0 / self.num_buckets) ** (1.0 / self.hashes_per_bucket)


@frozen
class Decontaminate(fields.Section):
  paths: tuple[str, ...]
  n_grams: int = fields.positive()
  min_words: int = fields.positive()

  def file_problems(self) -> Iterator[str]:
    for p in self.paths:
      if not os.path.isfile(os.path.expanduser(p)):
        yield (f'clean.decontaminate.paths: {p!r} is not a file; give the evaluation JSONL '
               'files whose examples must not be trained on')


@frozen
class LineDedup(fields.Section):
  enabled: bool
  unit: Literal['line', 'paragraph']
  min_docs: int = fields.positive()
  min_chars: int = fields.non_negative(' (0: every non-blank unit)')

  def problems(self) -> Iterator[str]:
    if self.min_docs < 2:
      yield (f'clean.line_dedup.min_docs={self.min_docs} must be >= 2: every unit is in one '
             'document, so 1 would remove every line; give the number of documents a unit '
             'must be in to be boilerplate (default 5)')


@frozen
class Clean(fields.Section):
  input: str
  suffixes: tuple[str, ...]
  text_key: str
  id_key: str
  code_suffixes: tuple[str, ...]
  output: str
  tasks: int = fields.positive()
  workers: int = fields.positive()
  val_fraction: float = fields.in_range(0.0, 1.0, lo_inclusive=False)
  ftfy: bool
  exact_dedup: bool
  language: Language
  gopher_quality: GopherQuality
  gopher_repetition: GopherRepetition
  c4: C4
  pii: Pii
  minhash: MinHash
  decontaminate: Decontaminate
  line_dedup: LineDedup
  examples_per_reason: int = fields.non_negative(' (0: none in the report)')
  figures: bool

  def problems(self) -> Iterator[str]:
    if not self.output:
      yield 'clean.output is empty; give the directory the cleaned dataset is written to'
    if self.language.enabled and not self.language.languages:
      yield ('clean.language.languages is empty but clean.language.enabled is True; name the '
             "languages to keep, e.g. ('en',)")


# What does not change the output, so is left out of the config hash.
_NOT_HASHED = ('workers', 'output', 'examples_per_reason', 'figures')


def check(config: ml_collections.ConfigDict) -> Clean:
  """The typed `clean` section of a config, or ConfigError listing every problem."""
  from configs import clean as clean_defaults
  base = clean_defaults.get_config()
  known, have = set(keys.all_keys(base)), set(keys.all_keys(config))
  problems = [unknown_key(k, base) for k in sorted(have - known)
              if k.rpartition('.')[0] not in have - known]
  problems += [f"missing key '{k}'; start from configs.clean.get_config() and override fields"
               for k in sorted(known - have) if k.rpartition('.')[0] not in known - have]
  if not problems:
    problems = fields.type_problems(config, _Root, dict(keys.leaves(base)))
  if problems:
    raise ConfigError(problems)
  cfg = fields.build(Clean, config.clean)
  found, _ = fields.value_problems(cfg, 'clean.')
  found += fields.file_problems(cfg)
  if found:
    raise ConfigError(found)
  return cfg


def unknown_key(key: str, base: ml_collections.ConfigDict | None = None) -> str:
  """One line: the unknown dotted `key` (e.g. 'clean.minhash.n_gram'), the closest known
  key, and the valid keys of its section in configs/clean.py."""
  if base is None:
    from configs import clean as clean_defaults
    base = clean_defaults.get_config()
  known = keys.all_keys(base)
  parent = key.rpartition('.')[0]
  while parent and not isinstance(keys.get(base, parent), ml_collections.ConfigDict):
    parent = parent.rpartition('.')[0]  # inside an unknown section: the nearest known one
  section = keys.get(base, parent) if parent else base
  close = keys.closest(key, [k for k in known if k.rpartition('.')[0] == parent]) or (
      keys.closest(key, known))
  return (f"unknown key '{key}' (not in configs/clean.py)"
          + (f"; did you mean '{close}'?" if close else '')
          + f"; valid keys of {parent or 'the config'}: {', '.join(section.keys())}")


@frozen
class _Root(fields.Section):
  clean: Clean


def as_dict(cfg: Clean) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def config_hash(cfg: Clean) -> str:
  d = {k: v for k, v in as_dict(cfg).items() if k not in _NOT_HASHED}
  if not cfg.line_dedup.enabled:
    del d['line_dedup']  # off: the output (and hash) of a config from before it existed
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
