"""Train/validation split: whole documents by a stable hash, or the tail of the text."""

import hashlib

from lm.data.errors import DataError
from lm.data.sources import Document

SPLITS = ('train', 'validation')


def hash_unit(name: str) -> float:
  """A stable number in [0, 1) from a document name (same on every machine and run)."""
  digest = hashlib.sha1(name.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_documents(docs: list[Document], method: str,
                    val_fraction: float) -> dict[str, list[Document]]:
  """{'train': [...], 'validation': [...]}, both non-empty, each in source order."""
  if not 0.0 < val_fraction < 1.0:
    raise DataError(f'data.val_fraction={val_fraction} must be in (0, 1)')
  if method == 'document':
    return _by_document(docs, val_fraction)
  if method == 'tail':
    return _by_tail(docs, val_fraction)
  raise DataError(f"data.split={method!r}: expected 'document' or 'tail'")


def _by_document(docs: list[Document], val_fraction: float) -> dict[str, list[Document]]:
  if len(docs) < 2:
    raise DataError(f"data.split='document' needs at least 2 documents, the corpus has "
                    f"{len(docs)}; use data.split='tail' to split one text")
  units = [hash_unit(d.name) for d in docs]
  is_val = [u < val_fraction for u in units]
  if not any(is_val):  # too few documents for the fraction: take the lowest hash
    is_val[units.index(min(units))] = True
  if all(is_val):
    is_val[units.index(max(units))] = False
  return {'train': [d for d, v in zip(docs, is_val, strict=True) if not v],
          'validation': [d for d, v in zip(docs, is_val, strict=True) if v]}


def _by_tail(docs: list[Document], val_fraction: float) -> dict[str, list[Document]]:
  """The first int(n * (1 - val_fraction)) characters of the concatenation are train.

  Document boundaries are kept: the document that straddles the cut is split in two.
  """
  total = sum(len(d.text) for d in docs)
  cut = int(total * (1.0 - val_fraction))
  if cut <= 0 or cut >= total:
    raise DataError(f"data.split='tail' with data.val_fraction={val_fraction} leaves an empty "
                    f'split of {total} characters; change data.val_fraction')
  train, val, start = [], [], 0
  for d in docs:
    end = start + len(d.text)
    if end <= cut:
      train.append(d)
    elif start >= cut:
      val.append(d)
    else:
      train.append(Document(d.name, d.text[:cut - start]))
      val.append(Document(d.name + '#tail', d.text[cut - start:]))
    start = end
  return {'train': train, 'validation': val}
