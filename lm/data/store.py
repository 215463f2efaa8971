"""The split documents as a TFDS dataset in ArrayRecord files (no TensorFlow needed).

`LmDocuments` is a `GeneratorBasedBuilder` whose examples are handed to it as a
builder argument; TFDS writes them with `file_format='array_record'`, and they are
read back with `tfds.builder_from_directory(...).as_data_source()` — both paths are
pure Python/NumPy in TFDS 4.9, so only `array_record` is required, not TensorFlow.
"""

import pathlib
import shutil
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
  # Records are stored in the order they are generated, so a split can be streamed back
  # without sorting (read_texts still sorts by `index`, for stores written before this).
  disable_shuffling = True

  def __init__(self, *, splits: dict[str, Splits] | None = None, **kwargs):
    self._splits = splits or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalInfo(
        builder=self,
        description='Documents prepared by lm.data (see lm/data/sources.py).',
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


def write(splits: dict[str, Splits], data_dir: pathlib.Path) -> None:
  """Writes the splits under `data_dir` (a TFDS data_dir) as ArrayRecord."""
  builder = LmDocuments(splits=splits, data_dir=str(data_dir), file_format='array_record')
  was_active = tqdm_utils._active  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(False)
  try:
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
  examples.sort(key=lambda e: int(e['index']))  # TFDS stores examples in hashed-key order
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


def num_examples(data_dir: pathlib.Path, split: str) -> int:
  source = tfds.builder_from_directory(str(dataset_dir(data_dir))).as_data_source(split=split)
  return len(source)


def _as_str(value: bytes | str) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else value
