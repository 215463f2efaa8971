"""The split documents as a TFDS dataset in ArrayRecord files (no TensorFlow needed).

`LmDocuments` is a `GeneratorBasedBuilder` whose examples are handed to it as a
builder argument; TFDS writes them with `file_format='array_record'`, and they are
read back with `tfds.builder_from_directory(...).as_data_source()` — both paths are
pure Python/NumPy in TFDS 4.9, so only `array_record` is required, not TensorFlow.

Writing streams: TFDS's Shuffler keeps up to 1 GB of examples in memory (and then sorts a
whole bucket in memory; with shuffling disabled every example lands in one bucket), so
`write` puts `_InOrderSpool` in its place, which spools the examples to a file on disk in
the order they come and reads them back one at a time.
"""

import contextlib
import os
import pathlib
import shutil
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from lm.data.sources import Document
from lm.data.split import SPLITS

VERSION = '1.0.0'
# A split's documents: a list, or a function returning a fresh iterator (streamed: the
# documents are generated while TFDS writes them, never all held at once).
Splits = list[Document] | Callable[[], Iterable[Document]]


class _LocalInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks for pre-computed metadata on GCS (nothing to find)."""

  def initialize_from_bucket(self) -> None:
    pass


class LmDocuments(tfds.core.GeneratorBasedBuilder):
  """The train/validation documents of one prepared source."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, splits: dict[str, Splits] | None = None, **kwargs):
    self._splits = splits or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalInfo(
        builder=self,
        description='Documents prepared by lm.data (see lm/data/sources.py).',
        # Records are stored in the order they are generated, so a split streams back
        # without sorting (stores written before this are in hashed order: read_texts
        # sorts them by `index`, in memory).
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'index': tfds.features.Scalar(dtype=np.int64),  # position in the split
            'name': tfds.features.Text(),  # stable id the split was hashed on
            'text': tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # local data
    return {split: self._generate_examples(docs) for split, docs in self._splits.items()}

  def _generate_examples(self, docs: Iterable[Document] | Callable[[], Iterable[Document]]):
    for i, d in enumerate(docs() if callable(docs) else docs):
      yield i, {'index': i, 'name': d.name, 'text': d.text}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # No code directory with url checksums: the data is local. (Locating it would
    # also need `importlib_resources`, which TFDS 4.9.10 imports lazily and is absent.)
    return None

  # TFDS prints these to stdout; lm.data logs its own progress.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class _InOrderSpool:
  """TFDS's `shuffle.Shuffler` interface for `disable_shuffling` datasets whose keys come
  in increasing order (LmDocuments': 0, 1, 2, ...): records go to a temporary file as they
  are added and are read back in the same order, one at a time."""

  _LEN = struct.Struct('<Q')

  def __init__(self, dirpath: str, hash_salt: str | bytes, disable_shuffling: bool = False,
               ignore_duplicates: bool = False):
    del hash_salt, ignore_duplicates
    if not disable_shuffling:
      raise AssertionError('_InOrderSpool only stands in for an unshuffled split')
    os.makedirs(os.fspath(dirpath), exist_ok=True)
    self._path = os.path.join(os.fspath(dirpath), f'.lm-spool-{uuid.uuid4().hex}.tmp')
    self._file = open(self._path, 'wb')  # noqa: SIM115 (closed by __iter__)
    self._last_key: int | None = None
    self.size = 0
    self.num_examples = 0

  @property
  def bucket_lengths(self) -> list[int]:
    return [self.num_examples]

  def add(self, key: int, data: bytes) -> None:
    if self._last_key is not None and not key > self._last_key:
      raise AssertionError(f'keys must increase; {key} came after {self._last_key}')
    self._last_key = key
    self._file.write(self._LEN.pack(key) + self._LEN.pack(len(data)) + data)
    self.size += len(data)
    self.num_examples += 1

  def __iter__(self) -> Iterator[tuple[int, bytes]]:
    self._file.close()
    try:
      with open(self._path, 'rb') as f:
        for _ in range(self.num_examples):
          key, n = self._LEN.unpack(f.read(8))[0], self._LEN.unpack(f.read(8))[0]
          yield key, f.read(n)
    finally:
      os.remove(self._path)


@contextlib.contextmanager
def _streaming_writer() -> Iterator[None]:
  from tensorflow_datasets.core import shuffle  # the module TFDS's Writer looks it up in
  original = shuffle.Shuffler
  shuffle.Shuffler = _InOrderSpool
  try:
    yield
  finally:
    shuffle.Shuffler = original


def write(splits: dict[str, Splits], data_dir: pathlib.Path) -> None:
  """Writes the splits under `data_dir` (a TFDS data_dir) as ArrayRecord, streamed: a split
  given as a function is generated while it is written, never held in memory."""
  builder = LmDocuments(splits=splits, data_dir=str(data_dir), file_format='array_record')
  was_active = tqdm_utils._active  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(False)
  try:
    with _streaming_writer():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    tqdm_utils.display_progress_bar(was_active)
  shutil.rmtree(data_dir / 'downloads', ignore_errors=True)


def dataset_dir(data_dir: pathlib.Path) -> pathlib.Path:
  return data_dir / LmDocuments.name / VERSION


def read_texts(data_dir: pathlib.Path, split: str) -> list[str]:
  """The texts of one split, in the order they were written."""
  assert split in SPLITS, split
  source = tfds.builder_from_directory(str(dataset_dir(data_dir))).as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  # Stores written before LmDocuments disabled shuffling are in hashed-key order.
  examples.sort(key=lambda e: int(e['index']))
  return [_as_str(e['text']) for e in examples]


def iter_texts(data_dir: pathlib.Path, split: str) -> Iterator[str]:
  """The texts of one split in written order, one at a time (for stores written in order,
  which every store since `disable_shuffling` is; older ones are sorted in memory)."""
  assert split in SPLITS, split
  source = tfds.builder_from_directory(str(dataset_dir(data_dir))).as_data_source(split=split)
  for i in range(len(source)):
    example = source[i]
    if int(example['index']) != i:
      yield from read_texts(data_dir, split)[i:]
      return
    yield _as_str(example['text'])


class TextSource:
  """Random access to one split's texts by written position (`source[i]`, `len(source)`),
  for stores written in order; an older store (hashed order) is sorted in memory once."""

  def __init__(self, data_dir: pathlib.Path, split: str):
    assert split in SPLITS, split
    self._data_dir, self._split = data_dir, split
    self._source = tfds.builder_from_directory(str(dataset_dir(data_dir))).as_data_source(
        split=split)
    self._sorted: list[str] | None = None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> str:
    if self._sorted is None:
      example = self._source[int(i)]
      if int(example['index']) == int(i):
        return _as_str(example['text'])
      self._sorted = read_texts(self._data_dir, self._split)
    return self._sorted[int(i)]


def num_examples(data_dir: pathlib.Path, split: str) -> int:
  source = tfds.builder_from_directory(str(dataset_dir(data_dir))).as_data_source(split=split)
  return len(source)


def _as_str(value: bytes | str) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else value
