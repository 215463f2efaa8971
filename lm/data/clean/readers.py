"""Input listing, fingerprint and the reader step: text/JSONL/Parquet/WARC, plain/gz/zst.

`list_inputs(path)` resolves a file, a directory (searched recursively) or a glob to a
sorted list of (name, path); 'stdlib' names the embedded corpus (lm/data/sources.py).
`FileReader` is a datatrove step: task `rank` of `world_size` reads a contiguous block of
the list, one file at a time and one record at a time (nothing holds a whole file
but a plain text file, which is one document). Document ids are the file's relative name,
`name:line` for JSONL, `name:row` for Parquet (or the clean.id_key field), `name#n` for
WARC records, so the
train/validation split (lm/data/split.py) hashes the same names as data.source='text'.

WARC files go through warcio; the HTML of each `response` record becomes text with
trafilatura (the extractor FineWeb uses), and records it finds no text in are counted.

A dataset name reads a TFDS or Hugging Face dataset instead of files:
`clean.input='tfds:NAME[@SPLIT]'` (e.g. 'tfds:wikipedia/20230601.en@train[:1%]'; TFDS
prepares it the first time, which needs network and, for Beam builders, apache-beam) or
`'hf:NAME[@SPLIT]'` (`datasets.load_dataset`, network the first time). It is listed as
DATASET_SHARDS entries that the tasks share, each reading a contiguous block of rows by
random access; the text is the `clean.text_key` feature, the id `NAME@SPLIT/row`. Its
fingerprint is the name and split only (a changed remote dataset is not detected). These
readers are not exercised by the tests beyond their errors (no network here).
"""

import glob
import gzip
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterator
from typing import IO

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lm.data import sources
from lm.data.clean.config import CleanError
from lm.data.clean.steps import CODE, PROSE

COMPRESSIONS = ('.gz', '.zst', '.zstd')
DATASET_PREFIXES = ('tfds:', 'hf:')
DATASET_SHARDS = 16  # entries a dataset name is listed as (tasks take blocks of them)
FORMATS = ('text', 'jsonl', 'parquet', 'warc')


def split_suffix(name: str) -> tuple[str, str]:
  """(format, compression) of a file name: 'x.jsonl.zst' -> ('jsonl', '.zst')."""
  lower = name.lower()
  compression = next((c for c in COMPRESSIONS if lower.endswith(c)), '')
  base = lower[:len(lower) - len(compression)]
  if base.endswith('.jsonl') or base.endswith('.json'):
    return 'jsonl', compression
  if base.endswith('.parquet'):
    return 'parquet', compression
  if base.endswith('.warc') or base.endswith('.arc'):
    return 'warc', compression
  return 'text', compression


def list_inputs(path: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
  """Sorted (relative name, absolute path) of the input files; raises CleanError if none."""
  if path == 'stdlib':
    return [(name, str(p)) for name, p in sources.stdlib_files()]
  if path.startswith(DATASET_PREFIXES):
    kind, _, rest = path.partition(':')
    name, _, split = rest.partition('@')
    if not name:
      raise CleanError(f"clean.input={path!r} names no dataset; give '{kind}:NAME[@SPLIT]'")
    spec = f'{kind}:{name}@{split or "train"}'
    return [(f'{spec}#{k:03d}', spec) for k in range(DATASET_SHARDS)]
  if not path:
    raise CleanError("clean.input is empty; give a file, directory or glob (or 'stdlib')")
  p = pathlib.Path(path).expanduser()
  if p.is_file():
    return [(p.name, str(p.absolute()))]
  if p.is_dir():
    found = [f for f in p.rglob('*') if f.is_file() and _wanted(f.name, suffixes)]
    base = p
  elif any(ch in path for ch in '*?['):
    found = [pathlib.Path(x) for x in sorted(glob.glob(str(p), recursive=True))
             if os.path.isfile(x)]
    base = pathlib.Path(os.path.commonpath([f.parent for f in found])) if found else p.parent
  else:
    raise CleanError(f'clean.input={path!r} does not exist; give a file, directory or glob')
  if not found:
    raise CleanError(f'clean.input={path!r} matches no input files (a directory is searched '
                     f'recursively for {", ".join(suffixes)}, optionally .gz/.zst; see '
                     'clean.suffixes)')
  return sorted((f.relative_to(base).as_posix(), str(f.absolute())) for f in found)


def _wanted(name: str, suffixes: tuple[str, ...]) -> bool:
  lower = name.lower()
  for c in COMPRESSIONS:
    if lower.endswith(c):
      lower = lower[:-len(c)]
  return any(lower.endswith(s) for s in suffixes)


def fingerprint(files: list[tuple[str, str]]) -> str:
  """A hash of the input's names, sizes and modification times (cheap; no bytes read)."""
  h = hashlib.sha256()
  for name, path in files:
    if is_dataset(name):
      h.update(f'{name}\n'.encode())
      continue
    st = os.stat(path)
    h.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]


def is_dataset(name: str) -> bool:
  return name.startswith(DATASET_PREFIXES)


def input_bytes(files: list[tuple[str, str]]) -> int:
  """Bytes of the input files (a dataset name counts 0: its size is not known up front)."""
  return sum(os.stat(p).st_size for n, p in files if not is_dataset(n))


def shard(items: list, rank: int, world_size: int) -> list:
  """The rank-th of `world_size` contiguous blocks (sizes differ by at most one)."""
  n = len(items)
  return items[rank * n // world_size:(rank + 1) * n // world_size]


def _open(path: str, compression: str) -> IO[bytes]:
  if compression == '.gz':
    return gzip.open(path, 'rb')
  if compression in ('.zst', '.zstd'):
    import zstandard
    return zstandard.ZstdDecompressor().stream_reader(open(path, 'rb'), closefd=True)
  return open(path, 'rb')


class FileReader(PipelineStep):
  """Reads this task's block of `files` as Documents (metadata: file, kind, url for WARC)."""

  type = '📖 - READER'
  name = '📖 files (text/jsonl/parquet/warc)'

  def __init__(self, files: list[tuple[str, str]], text_key: str, code_suffixes: tuple[str, ...],
               id_key: str = ''):
    super().__init__()
    self.files = files
    self.text_key = text_key
    self.id_key = id_key
    self.code_suffixes = tuple(code_suffixes)

  def run(self, data: DocumentsPipeline = None, rank: int = 0,
          world_size: int = 1) -> DocumentsPipeline:
    for name, path in shard(self.files, rank, world_size):
      if is_dataset(name):
        self.stat_update('input_files')
        for doc_id, text in self._dataset(name, path):
          self.stat_update('documents')
          doc = Document(text=text, id=doc_id, metadata={'file': path, 'kind': PROSE})
          self.update_doc_stats(doc)
          yield doc
        continue
      fmt, compression = split_suffix(name)
      kind = CODE if _wanted(name, self.code_suffixes) else PROSE
      self.stat_update('input_files')
      reader = {'text': self._text, 'jsonl': self._jsonl, 'parquet': self._parquet,
                'warc': self._warc}[fmt]
      for doc_id, text, extra in reader(name, path, compression):
        self.stat_update('documents')
        if extra.get('replaced_bytes'):
          self.stat_update('replaced_bytes', value=extra['replaced_bytes'])
        doc = Document(text=text, id=doc_id, metadata={'file': name, 'kind': kind, **extra})
        self.update_doc_stats(doc)
        yield doc

  def _dataset(self, name: str, spec: str) -> Iterator[tuple[str, str]]:
    """Rows of this entry's block of a 'tfds:NAME@SPLIT' / 'hf:NAME@SPLIT' dataset."""
    kind, _, rest = spec.partition(':')
    dataset, _, split = rest.rpartition('@')
    k = int(name.rpartition('#')[2])
    where = f'clean.input={spec!r}'
    try:
      if kind == 'tfds':
        import tensorflow_datasets as tfds
        try:
          source = tfds.data_source(dataset, split=split,
                                    builder_kwargs={'file_format': 'array_record'})
        except tfds.core.registered.DatasetNotFoundError:
          raise CleanError(f'{where}: {dataset!r} is not a TFDS dataset; see '
                           'https://www.tensorflow.org/datasets/catalog') from None
      else:
        try:
          import datasets
        except ImportError:
          raise CleanError(f'{where} needs the Hugging Face datasets library: pip install '
                           'datasets') from None
        source = datasets.load_dataset(dataset, split=split)
    except CleanError:
      raise
    except Exception as e:  # network, missing split, Beam, ...
      raise CleanError(f'{where} could not be loaded ({type(e).__name__}: '
                       f'{" ".join(str(e).split())[:300]}); it needs network the first time '
                       '(and apache-beam for a TFDS Beam builder)') from e
    n = len(source)
    for i in range(k * n // DATASET_SHARDS, (k + 1) * n // DATASET_SHARDS):
      row = source[i]
      if self.text_key not in row:
        raise CleanError(f'{where}: no feature {self.text_key!r} (clean.text_key); it has '
                         f'{sorted(row)}')
      value = row[self.text_key]
      text = sources.decode_utf8(value)[0] if isinstance(value, bytes) else str(value)
      if text.strip():
        yield f'{spec}/{i}', text

  def _text(self, name: str, path: str, compression: str) -> Iterator[tuple[str, str, dict]]:
    with _open(path, compression) as f:
      text, replaced = sources.decode_utf8(f.read())
    if text.strip():
      yield name, text, {'replaced_bytes': replaced} if replaced else {}

  def _jsonl(self, name: str, path: str, compression: str) -> Iterator[tuple[str, str, dict]]:
    with _open(path, compression) as raw:
      for lineno, line in enumerate(io.TextIOWrapper(raw, 'utf-8', errors='replace'), start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise CleanError(f'{path}:{lineno}: not valid JSON ({e.msg}); each line of a .jsonl '
                           'file must be one JSON object') from None
        value = record.get(self.text_key) if isinstance(record, dict) else None
        if not isinstance(value, str):
          raise CleanError(f'{path}:{lineno}: no string field {self.text_key!r} '
                           '(clean.text_key); set clean.text_key to the field with the text')
        if value.strip():
          yield self._id(record, f'{name}:{lineno}'), value, {}

  def _parquet(self, name: str, path: str, compression: str) -> Iterator[tuple[str, str, dict]]:
    import pyarrow.parquet as pq
    if compression:
      raise CleanError(f'{path}: Parquet compresses its own columns; give the .parquet file '
                       'without an outer .gz/.zst')
    pf = pq.ParquetFile(path)
    if self.text_key not in pf.schema_arrow.names:
      raise CleanError(f'{path}: no column {self.text_key!r} (clean.text_key); it has '
                       f'{pf.schema_arrow.names}')
    columns = [self.text_key] + ([self.id_key] if self.id_key in pf.schema_arrow.names else [])
    row = 0
    for batch in pf.iter_batches(columns=columns, batch_size=1024):
      for record in batch.to_pylist():
        row += 1
        value = record[self.text_key]
        if isinstance(value, str) and value.strip():
          yield self._id(record, f'{name}:{row}'), value, {}

  def _id(self, record: dict, default: str) -> str:
    value = record.get(self.id_key) if self.id_key else None
    return str(value) if value not in (None, '') else default

  def _warc(self, name: str, path: str, compression: str) -> Iterator[tuple[str, str, dict]]:
    import trafilatura
    from warcio.archiveiterator import ArchiveIterator
    with _open(path, '' if compression == '.gz' else compression) as f:  # warcio un-gzips
      for n, record in enumerate(ArchiveIterator(f)):
        if record.rec_type != 'response':
          continue
        ctype = (record.http_headers.get_header('Content-Type') or '') if record.http_headers \
            else ''
        if 'html' not in ctype.lower():
          self.stat_update('warc_non_html')
          continue
        html, _ = sources.decode_utf8(record.content_stream().read())
        text = trafilatura.extract(html, favor_precision=True, include_comments=False,
                                   include_tables=True, deduplicate=False)
        if not text or not text.strip():
          self.stat_update('warc_no_text')
          continue
        url = record.rec_headers.get_header('WARC-Target-URI') or ''
        yield f'{name}#{n}', text, {'url': url}
