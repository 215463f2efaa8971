"""Where prepared data lives, and how each piece of it is written atomically.

A cache entry is a directory that appears in one `os.rename`: it is built in a
temporary sibling and renamed into place, so a reader never sees half a file and
two processes preparing the same entry concurrently cannot corrupt it (the one
that renames second throws its copy away).
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any


def cache_root(cache_dir: str) -> pathlib.Path:
  """`cache_dir`, else $LM_CACHE, else ~/.cache/lm."""
  root = cache_dir or os.environ.get('LM_CACHE', '') or '~/.cache/lm'
  return pathlib.Path(root).expanduser().resolve()


def short_hash(obj: Any, n: int = 10) -> str:
  """A stable hex digest of a JSON-able object (key order does not matter)."""
  blob = json.dumps(obj, sort_keys=True, separators=(',', ':'), default=str)
  return hashlib.sha1(blob.encode('utf-8')).hexdigest()[:n]


@contextlib.contextmanager
def atomic_dir(final: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory that becomes `final` on success.

  On an exception the temporary directory is removed and `final` is untouched.
  If another process created `final` meanwhile, its copy wins and ours is dropped.
  """
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.parent / f'.tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.rename(tmp, final)
  except OSError:
    if not final.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer finished first


def write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, indent=1, sort_keys=True) + '\n')


def read_json(path: pathlib.Path) -> Any:
  return json.loads(path.read_text())
