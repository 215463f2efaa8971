"""Train/validation split: whole documents by a stable hash, or the tail of the text.

`stream_splits` splits a stream that can be read again (one pass keeps a number per
document, then each split streams its documents); `split_documents` is the same on a list.
"""

import array
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from lm.data.errors import DataError
from lm.data.sources import Document

SPLITS = ('train', 'validation')
Stream = Callable[[], Iterable[Document]]  # a fresh pass over the same documents per call


def hash_unit(name: str) -> float:
  """A stable number in [0, 1) from a document name (same on every machine and run)."""
  digest = hashlib.sha1(name.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_documents(docs: list[Document], method: str,
                    val_fraction: float) -> dict[str, list[Document]]:
  """{'train': [...], 'validation': [...]}, both non-empty, each in source order."""
  return {name: list(make()) for name, make in
          stream_splits(lambda: docs, method, val_fraction).items()}


def stream_splits(docs: Stream, method: str,
                  val_fraction: float) -> dict[str, Callable[[], Iterator[Document]]]:
  """{'train': f, 'validation': g}: each call of f (g) streams that split's documents in
  source order, as `split_documents` would list them. Reads `docs()` once here."""
  if not 0.0 < val_fraction < 1.0:
    raise DataError(f'data.val_fraction={val_fraction} must be in (0, 1)')
  if method == 'document':
    return _by_document(docs, val_fraction)
  if method == 'tail':
    return _by_tail(docs, val_fraction)
  raise DataError(f"data.split={method!r}: expected 'document' or 'tail'")


def validation_flags(units: Sequence[float], val_fraction: float) -> bytearray:
  """Which documents (by hash unit) go to validation: those under val_fraction, with at
  least one in each split."""
  if len(units) < 2:
    raise DataError(f"data.split='document' needs at least 2 documents, the corpus has "
                    f"{len(units)}; use data.split='tail' to split one text")
  is_val = bytearray(u < val_fraction for u in units)
  if not any(is_val):  # too few documents for the fraction: take the lowest hash
    is_val[units.index(min(units))] = True
  if all(is_val):
    is_val[units.index(max(units))] = False
  return is_val


def _by_document(docs: Stream, val_fraction: float) -> dict[str, Callable[[], Iterator[Document]]]:
  is_val = validation_flags(array.array('d', (hash_unit(d.name) for d in docs())), val_fraction)

  def pick(val: bool) -> Callable[[], Iterator[Document]]:
    return lambda: (d for d, v in zip(docs(), is_val, strict=True) if v == val)
  return {'train': pick(False), 'validation': pick(True)}


def _by_tail(docs: Stream, val_fraction: float) -> dict[str, Callable[[], Iterator[Document]]]:
  """The first int(n * (1 - val_fraction)) characters of the concatenation are train.

  Document boundaries are kept: the document that straddles the cut is split in two.
  """
  total = sum(len(d.text) for d in docs())
  cut = int(total * (1.0 - val_fraction))
  if cut <= 0 or cut >= total:
    raise DataError(f"data.split='tail' with data.val_fraction={val_fraction} leaves an empty "
                    f'split of {total} characters; change data.val_fraction')

  def train() -> Iterator[Document]:
    start = 0
    for d in docs():
      end = start + len(d.text)
      if end <= cut:
        yield d
      elif start < cut:
        yield Document(d.name, d.text[:cut - start])
      else:
        return
      start = end

  def validation() -> Iterator[Document]:
    start = 0
    for d in docs():
      end = start + len(d.text)
      if start >= cut:
        yield d
      elif end > cut:
        yield Document(d.name + '#tail', d.text[cut - start:])
      start = end
  return {'train': train, 'validation': validation}
