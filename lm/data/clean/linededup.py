"""Line (or paragraph) level dedup: units repeated across many documents are boilerplate.

A unit is a line (or a paragraph: text between blank lines) of a prose document. Its key
is the unit stripped, whitespace runs as one space, lower-cased; keys shorter than
`min_chars` are never touched (blank lines, "See you soon.", short headings). A key found
in at least `min_docs` distinct documents is boilerplate (navigation, share buttons,
newsletter banners), and every occurrence of it is removed from every document, as C4's
and Gopher's boilerplate removal do (all copies, not all but one). Three datatrove stages
over the shards of stage 6:

  LineCounts     per task: the sorted 64-bit key hashes of its shard with, for each, the
                 number of documents holding it -> work/line_counts/<rank>.npy
  LineMerge      1 task: the hashes whose document count, summed over the tasks, is
                 >= min_docs -> work/line_boilerplate.npy (merged one hash range at a time,
                 so memory holds 1/RANGES of the counts)
  LineFilter     per task: the units whose hash is boilerplate removed; a document left
                 blank goes to removed/line_dedup/ (reason 'boilerplate_only'), a changed one
                 keeps metadata line_dedup_removed (units) and line_dedup_chars; the task's
                 figures and removed units -> work/line_stats/<rank>.json (the report)

Code documents are neither counted nor changed: a line repeated across many source files
(`from __future__ import annotations`, `if __name__ == '__main__':`, `raise
NotImplementedError`) is part of each program, and removing it breaks the file. Each task's
files are written whole (a temporary name, then renamed), so a killed task leaves none
behind and its rerun writes the same ones. datatrove's SentenceDedup is not used: it loads
NLTK's punkt data (a download) even with split_sentences=False.
"""

import json
import os
import pathlib
import re
from typing import Any, Literal

import numpy as np
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lm.data.clean import steps

Unit = Literal['line', 'paragraph']
RANGES = 16  # hash ranges LineMerge sums one at a time
COUNTS = np.dtype([('hash', '<u8'), ('docs', '<u4')])  # a LineCounts file's rows, by hash
REMOVED_REASON = 'boilerplate_only'
_PARAGRAPH_BREAK = re.compile(r'\n[ \t]*\n\s*')
_BLANKS = re.compile(r'\n{3,}')
_JOIN = {'line': '\n', 'paragraph': '\n\n'}


def units(text: str, unit: Unit) -> list[str]:
  """The document's lines, or its paragraphs (split at blank lines)."""
  return text.split('\n') if unit == 'line' else _PARAGRAPH_BREAK.split(text)


def key(u: str) -> str:
  """What is compared: the unit stripped, whitespace runs as one space, lower-cased."""
  return ' '.join(u.lower().split())


def key_hash(k: str) -> int:
  return xxhash.xxh64_intdigest(k.encode('utf-8'))


def doc_hashes(text: str, unit: Unit, min_chars: int) -> np.ndarray:
  """The sorted distinct hashes of the document's keys of at least `min_chars` characters."""
  hashes = [key_hash(k) for k in map(key, units(text, unit)) if len(k) >= min_chars]
  return np.unique(np.array(hashes, np.uint64))


def _save(path: pathlib.Path, write: Any) -> None:
  """`write(tmp)` then rename: a reader never sees a half-written file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp')
  write(tmp)
  os.replace(tmp, path)


def _npy(array: np.ndarray) -> Any:
  def write(tmp: pathlib.Path) -> None:
    with open(tmp, 'wb') as f:
      np.save(f, array)
  return write


class LineCounts(PipelineStep):
  """For its shard: each key hash and the number of prose documents holding it."""

  type = '🫂 - DEDUP'
  name = '📏 line counts'

  def __init__(self, folder: pathlib.Path, unit: Unit, min_chars: int):
    super().__init__()
    self.folder, self.unit, self.min_chars = str(folder), unit, min_chars

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
    per_doc = []
    for doc in data:
      self.stat_update('total')
      if steps.is_code(doc):
        self.stat_update('code_skipped')
        continue
      with self.track_time():
        per_doc.append(doc_hashes(doc.text, self.unit, self.min_chars))
    hashes, counts = np.unique(np.concatenate(per_doc or [np.zeros(0, np.uint64)]),
                               return_counts=True)
    self.stat_update('distinct_units', value=len(hashes))
    table = np.empty(len(hashes), COUNTS)
    table['hash'], table['docs'] = hashes, counts
    _save(pathlib.Path(self.folder) / f'{rank:05d}.npy', _npy(table))


class LineMerge(PipelineStep):
  """Sums the tasks' counts (one hash range at a time) and keeps the hashes of the keys
  found in at least `min_docs` documents, sorted."""

  type = '🫂 - DEDUP'
  name = '📏 line merge'

  def __init__(self, counts: pathlib.Path, output: pathlib.Path, tasks: int, min_docs: int):
    super().__init__()
    self.counts, self.output = str(counts), str(output)
    self.tasks, self.min_docs = tasks, min_docs

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
    tables = [np.load(pathlib.Path(self.counts) / f'{r:05d}.npy', mmap_mode='r')
              for r in range(self.tasks)]  # read a range at a time
    # Each file's rows (sorted by hash) cut into RANGES equal hash ranges.
    edges = np.arange(1, RANGES, dtype=np.uint64) * np.uint64(2 ** 64 // RANGES)
    cuts = [[0, *np.searchsorted(t['hash'], edges), len(t)] for t in tables]
    found = []
    for k in range(RANGES):
      rows = np.concatenate([t[c[k]:c[k + 1]] for t, c in zip(tables, cuts, strict=True)])
      hashes, counts = rows['hash'], rows['docs'].astype(np.int64)
      distinct, inverse = np.unique(hashes, return_inverse=True)
      total = np.bincount(inverse, weights=counts, minlength=len(distinct))
      found.append(distinct[total >= self.min_docs])
      self.stat_update('distinct_units', value=len(distinct))
    boilerplate = np.concatenate(found)  # ranges in order: sorted
    self.stat_update('boilerplate_units', value=len(boilerplate))
    _save(pathlib.Path(self.output), _npy(boilerplate))


def remove_units(text: str, unit: Unit, min_chars: int,
                 boilerplate: np.ndarray) -> tuple[str, list[str]]:
  """(text without its boilerplate units, the keys removed, one per occurrence)."""
  parts = units(text, unit)
  keys = [key(u) for u in parts]
  long = [i for i, k in enumerate(keys) if len(k) >= min_chars]
  if not long or not len(boilerplate):
    return text, []
  hashes = np.array([key_hash(keys[i]) for i in long], np.uint64)
  at = np.minimum(np.searchsorted(boilerplate, hashes), len(boilerplate) - 1)
  drop = {i for i, hit in zip(long, boilerplate[at] == hashes, strict=True) if hit}
  if not drop:
    return text, []
  kept = _JOIN[unit].join(u for i, u in enumerate(parts) if i not in drop)
  return _BLANKS.sub('\n\n', kept).strip('\n'), [keys[i] for i in sorted(drop)]


class LineFilter(PipelineStep):
  """Removes every boilerplate unit from each prose document of its shard."""

  type = '🫂 - DEDUP'
  name = '📏 line filter'

  def __init__(self, boilerplate: pathlib.Path, stats: pathlib.Path, unit: Unit,
               min_chars: int, exclusion_writer: Any):
    super().__init__()
    self.boilerplate, self.stats_folder = str(boilerplate), str(stats)
    self.unit, self.min_chars = unit, min_chars
    self.exclusion_writer = exclusion_writer

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    boilerplate = np.load(self.boilerplate)
    figures = dict.fromkeys(('docs_in', 'chars_in', 'docs_kept', 'chars_kept', 'docs_changed',
                             'docs_removed', 'code_skipped', 'units_removed', 'chars_removed'), 0)
    removed_units: dict[str, list[int]] = {}  # key: [documents, occurrences]
    with self.exclusion_writer as writer:
      for doc in data:
        figures['docs_in'] += 1
        figures['chars_in'] += len(doc.text)
        if steps.is_code(doc):
          figures['code_skipped'] += 1
        else:
          with self.track_time():
            text, keys = remove_units(doc.text, self.unit, self.min_chars, boilerplate)
          if keys:
            text = text if text.strip() else ''
            self._count(doc, text, keys, figures, removed_units)
            if not text.strip():
              figures['docs_removed'] += 1
              self.stat_update('removed')
              writer.write(doc, rank)  # the original text: what was removed
              continue
            doc.text = text
        figures['docs_kept'] += 1
        figures['chars_kept'] += len(doc.text)
        yield doc
    figures['units'] = {k: removed_units[k] for k in sorted(removed_units)}
    _save(pathlib.Path(self.stats_folder) / f'{rank:05d}.json',
          lambda tmp: tmp.write_text(json.dumps(figures)))

  def _count(self, doc: Document, text: str, keys: list[str], figures: dict[str, Any],
             removed_units: dict[str, list[int]]) -> None:
    chars = len(doc.text) - len(text)
    figures['units_removed'] += len(keys)
    figures['chars_removed'] += chars
    figures['docs_changed'] += 1
    self.stat_update('changed')
    doc.metadata['line_dedup_removed'] = len(keys)
    doc.metadata['line_dedup_chars'] = chars
    for k in sorted(set(keys)):
      counts = removed_units.setdefault(k, [0, 0])
      counts[0] += 1
      counts[1] += keys.count(k)


def summary(stats: pathlib.Path, top: int = 20) -> dict[str, Any]:
  """The filter tasks' figures summed, with the `top` removed units by documents."""
  total: dict[str, Any] = {}
  units_: dict[str, list[int]] = {}
  for f in sorted(stats.glob('*.json')):
    figures = json.loads(f.read_text())
    for k, (d, n) in figures.pop('units').items():
      u = units_.setdefault(k, [0, 0])
      u[0] += d
      u[1] += n
    for k, v in figures.items():
      total[k] = total.get(k, 0) + v
  ranked = sorted(units_.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
  total['distinct_units_removed'] = len(units_)
  total['top_units'] = [{'unit': k, 'docs': d, 'occurrences': n} for k, (d, n) in ranked[:top]]
  return total
