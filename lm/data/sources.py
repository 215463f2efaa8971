"""Where documents come from: the embedded stdlib corpus, local text files, TFDS.

Every source yields `Document`s with a stable `name` (a relative path, `file:line`
for .jsonl, `split/index` for TFDS) that the train/validation split hashes, so the
split is the same on every machine. Text is decoded as UTF-8; undecodable bytes
become U+FFFD and are counted, never silently dropped.
"""

import codecs
import dataclasses
import glob
import itertools
import json
import os
import pathlib
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from lm.data.errors import DataError

TEXT_SUFFIXES = ('.txt', '.jsonl')
_SKIP_DIRS = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # stable id, hashed by the document split
  text: str


@dataclasses.dataclass
class Corpus:
  documents: list[Document]
  replaced_bytes: int  # non-UTF-8 bytes replaced by U+FFFD


# ---- UTF-8 with counted replacement -------------------------------------------

_replaced = [0]


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
  _replaced[0] += err.end - err.start
  return '\ufffd', err.end


codecs.register_error('lm.data.count_replace', _count_and_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
  """`data.decode('utf-8', errors='replace')` and the number of bytes replaced."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    before = _replaced[0]
    text = data.decode('utf-8', 'lm.data.count_replace')
    return text, _replaced[0] - before


# ---- file listing ---------------------------------------------------------------


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()['stdlib'])


def stdlib_files() -> list[tuple[str, pathlib.Path]]:
  """(relative name, path) of the stdlib's .py files, tests and site-packages excluded."""
  root = stdlib_root()
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith('test')]
    for f in filenames:
      if f.endswith('.py'):
        path = pathlib.Path(dirpath, f)
        found.append((path.relative_to(root).as_posix(), path))
  if not found:
    raise DataError(f'data.source=stdlib: no .py files under {root}; use data.source=text')
  return sorted(found)


def text_files(path: str) -> list[tuple[str, pathlib.Path]]:
  """(relative name, path) of the files `data.path` names: a file, a directory or a glob."""
  if not path:
    raise DataError("data.path is empty; data.source='text' needs a file, directory or glob")
  p = pathlib.Path(path).expanduser()
  if p.is_file():
    files, base = [p], p.parent
  elif p.is_dir():
    files = [f for f in p.rglob('*') if f.is_file() and f.suffix in TEXT_SUFFIXES]
    base = p
  elif any(ch in path for ch in '*?['):
    files = [pathlib.Path(f) for f in glob.glob(str(p), recursive=True) if os.path.isfile(f)]
    base = pathlib.Path(os.path.commonpath([f.parent for f in files])) if files else p.parent
  else:
    raise DataError(f'data.path={path!r} does not exist; give a file, directory or glob')
  if not files:
    raise DataError(f'data.path={path!r} matches no files (a directory is searched for '
                    f'{" and ".join(TEXT_SUFFIXES)} files, recursively)')
  return sorted((f.relative_to(base).as_posix(), f) for f in files)


# ---- identity (for the cache key) and reading ---------------------------------


def describe(cfg: Any) -> dict[str, Any]:
  """What identifies the source's content, cheaply (file sizes and mtimes, not bytes)."""
  if cfg.source == 'stdlib':
    files = stdlib_files()
    return {'source': 'stdlib', 'root': str(stdlib_root()), 'python': sys.version,
            'files': len(files), 'bytes': sum(p.stat().st_size for _, p in files)}
  if cfg.source == 'text':
    files = text_files(cfg.path)
    stats = [(name, p.stat().st_size, p.stat().st_mtime_ns) for name, p in files]
    return {'source': 'text', 'path': str(pathlib.Path(cfg.path).expanduser().absolute()),
            'jsonl_field': cfg.jsonl_field, 'files': stats}
  if cfg.source == 'tfds':
    if not cfg.tfds_name:
      raise DataError("data.tfds_name is empty; data.source='tfds' needs a TFDS dataset name")
    return {'source': 'tfds', 'name': cfg.tfds_name, 'split': cfg.tfds_split,
            'feature': cfg.tfds_text_feature, 'data_dir': cfg.tfds_data_dir}
  if cfg.source == 'cleaned':
    root = cleaned_dir(cfg.path)
    meta = json.loads((root / 'meta.json').read_text())
    return {'source': 'cleaned', 'path': str(root), 'identity': meta['identity']}
  raise DataError(f"data.source={cfg.source!r}: expected 'stdlib', 'text', 'tfds' or 'cleaned'")


def cleaned_dir(path: str) -> pathlib.Path:
  """The directory `python -m lm clean` wrote (clean.output), checked to be finished."""
  root = pathlib.Path(path).expanduser().absolute()
  if not (root / 'meta.json').is_file():
    raise DataError(f'data.path={path!r} is not a finished cleaned dataset (no meta.json); run '
                    '`python -m lm clean --config.clean.output=DIR` and set data.path=DIR')
  return root


def label(cfg: Any) -> str:
  """A short human-readable name for the cache directory."""
  if cfg.source == 'text':
    parts = pathlib.Path(cfg.path).parts
    plain = list(itertools.takewhile(lambda p: not any(ch in p for ch in '*?['), parts))
    stem = (pathlib.Path(*plain).stem if plain else '') or 'text'
    return 'text-' + ''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)[:40]
  if cfg.source == 'cleaned':
    return 'cleaned-' + ''.join(c if c.isalnum() or c in '-_.' else '_'
                                for c in pathlib.Path(cfg.path).name)[:40]
  if cfg.source == 'tfds':
    return 'tfds-' + cfg.tfds_name.replace('/', '_').replace(':', '_')
  return cfg.source


def read(cfg: Any) -> Corpus:
  """All non-empty documents of the source, in a stable order (at most cfg.max_docs)."""
  counts = {'replaced_bytes': 0}
  docs = list(stream(cfg, counts))
  return Corpus(docs, counts['replaced_bytes'])


def stream(cfg: Any, counts: dict[str, int] | None = None) -> Iterator[Document]:
  """`read(cfg).documents` one at a time (a file is read when its turn comes); adds the
  non-UTF-8 bytes replaced to counts['replaced_bytes']. Each call reads the source again."""
  counts = {'replaced_bytes': 0} if counts is None else counts
  if cfg.source == 'stdlib':
    docs = _stream_files(stdlib_files(), cfg.jsonl_field, cfg.max_docs, counts)
    where = f'the stdlib at {stdlib_root()}'
  elif cfg.source == 'text':
    docs = _stream_files(text_files(cfg.path), cfg.jsonl_field, cfg.max_docs, counts)
    where = f'data.path={cfg.path!r}'
  else:
    describe(cfg)  # argument checks
    docs = _stream_tfds(cfg, counts)
    where = f'data.tfds_name={cfg.tfds_name!r}'
  empty = True
  for doc in docs:
    empty = False
    yield doc
  if empty:
    raise DataError(f'{where} holds no non-empty text; point data.path at a corpus with text')


def _stream_files(files: list[tuple[str, pathlib.Path]], jsonl_field: str, max_docs: int,
                  counts: dict[str, int]) -> Iterator[Document]:
  n = 0
  for name, path in files:
    text, replaced = decode_utf8(path.read_bytes())
    counts['replaced_bytes'] += replaced
    file_docs = (_jsonl_documents(name, path, text, jsonl_field) if path.suffix == '.jsonl'
                 else [Document(name, text)] if text else [])
    for doc in file_docs:
      yield doc
      n += 1
      if max_docs and n >= max_docs:
        return


def _jsonl_documents(name: str, path: pathlib.Path, text: str, field: str) -> list[Document]:
  docs = []
  for lineno, line in enumerate(text.split('\n'), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{path}:{lineno}: not valid JSON ({e.msg}); each line of a .jsonl '
                      'file must be one JSON object') from None
    if not isinstance(record, dict) or field not in record:
      raise DataError(f'{path}:{lineno}: no field {field!r} (data.jsonl_field); set '
                      'data.jsonl_field to the field that holds the text')
    value = record[field]
    if not isinstance(value, str):
      raise DataError(f'{path}:{lineno}: field {field!r} is a {type(value).__name__}, not a string')
    if value:
      docs.append(Document(f'{name}:{lineno}', value))
  return docs


def _stream_tfds(cfg: Any, counts: dict[str, int]) -> Iterator[Document]:
  """Documents of a TFDS dataset's split (downloads and prepares it the first time)."""
  try:
    source = tfds.data_source(cfg.tfds_name, split=cfg.tfds_split,
                              data_dir=cfg.tfds_data_dir or None,
                              builder_kwargs={'file_format': 'array_record'})
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'data.tfds_name={cfg.tfds_name!r} is not a TFDS dataset; see '
                    'https://www.tensorflow.org/datasets/catalog') from None
  except Exception as e:  # network, missing split, ...
    raise DataError(f'data.tfds_name={cfg.tfds_name!r} (split data.tfds_split='
                    f'{cfg.tfds_split!r}) could not be loaded: {e}') from e
  n = len(source) if not cfg.max_docs else min(len(source), cfg.max_docs)
  for i in range(n):
    example = source[i]
    if cfg.tfds_text_feature not in example:
      raise DataError(f'data.tfds_text_feature={cfg.tfds_text_feature!r} is not a feature '
                      f'of {cfg.tfds_name}; it has {sorted(example)}')
    value = example[cfg.tfds_text_feature]
    text, k = decode_utf8(value) if isinstance(value, bytes) else (str(value), 0)
    counts['replaced_bytes'] += k
    if text:
      yield Document(f'{cfg.tfds_split}/{i}', text)
