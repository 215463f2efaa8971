"""Concat-then-split packing into rows of seq_len + 1 tokens, and rows -> model batches.

Shapes: N rows, L = seq_len + 1 tokens per packed row, B rows per batch, T = seq_len.
Each document is [bos] + tokens + [eos]; documents are concatenated in a fixed
shuffled order and cut into rows, so a document may continue into the next row.
`segments` numbers the document pieces of a row 1, 2, 3, ... (0 = padding, only at
the end of the last row). A row is stored as one ArrayRecord record: the int32
bytes of tokens_L followed by those of segments_L.

`pack` packs a list in memory; `pack_stream` gives the same rows from an iterator of
documents, block by block as they fill, holding about `chunk_tokens` tokens, and
`ShardWriter` writes such blocks into ArrayRecord shards of a bounded size.
"""

import pathlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from array_record.python import array_record_module

PACK_SEED = 0x5EED  # document order; fixed so the cache never depends on the training seed


def document_order(num_docs: int) -> np.ndarray:
  """The fixed shuffled order documents are packed in."""
  return np.random.default_rng(PACK_SEED).permutation(num_docs)


def pack(docs: Sequence[np.ndarray], seq_len: int, bos_id: int, eos_id: int,
         pad_id: int = 0, stride: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """tokens_NL, segments_NL (int32) of `docs` (token arrays) packed in the given order.

  Rows start every `stride` tokens of the stream (0: every seq_len + 1, no overlap);
  a smaller stride gives overlapping windows, like nanoGPT's random crops.
  """
  row_len = seq_len + 1
  lengths_D = np.array([len(d) + 2 for d in docs], np.int64)
  stream = np.empty(int(lengths_D.sum()), np.int32)
  ends_D = np.cumsum(lengths_D)
  starts_D = ends_D - lengths_D
  for doc, start, end in zip(docs, starts_D, ends_D, strict=True):
    stream[start] = bos_id
    stream[start + 1:end - 1] = doc
    stream[end - 1] = eos_id
  doc_of_token = np.repeat(np.arange(len(docs), dtype=np.int64), lengths_D)
  if stride and stride != row_len and len(stream) > row_len:
    starts_N = np.arange(0, len(stream) - row_len + 1, stride)
    window_NL = starts_N[:, None] + np.arange(row_len)
    tokens_NL, doc_NL = stream[window_NL], doc_of_token[window_NL]
    return tokens_NL, (doc_NL - doc_NL[:, :1] + 1).astype(np.int32)
  num_rows = -(-len(stream) // row_len)
  pad = num_rows * row_len - len(stream)
  tokens_NL = np.concatenate([stream, np.full(pad, pad_id, np.int32)]).reshape(num_rows, row_len)
  doc_NL = np.concatenate([doc_of_token, np.full(pad, -1)]).reshape(num_rows, row_len)
  segments_NL = np.where(doc_NL >= 0, doc_NL - doc_NL[:, :1] + 1, 0).astype(np.int32)
  return tokens_NL, segments_NL


def pack_stream(docs: Iterable[np.ndarray], seq_len: int, bos_id: int, eos_id: int,
                pad_id: int = 0, stride: int = 0, chunk_tokens: int = 1 << 20
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`pack` of a stream: yields (tokens_nL, segments_nL) blocks whose concatenation is
  `pack(list(docs), ...)`. Documents are consumed lazily: a block is yielded once about
  `chunk_tokens` tokens are pending, so at most that many tokens (plus a row) are held."""
  row_len = seq_len + 1
  windows = bool(stride) and stride != row_len
  if windows and not 0 < stride <= row_len:
    raise ValueError(f'stride={stride} must be in [1, seq_len + 1 = {row_len}]')
  pending: list[np.ndarray] = []
  pending_tokens = 0
  buf_tok = np.empty(0, np.int32)  # stream tokens not yet in an emitted row
  buf_doc = np.empty(0, np.int64)  # their document index
  offset = 0  # stream position of buf_tok[0]
  next_start = 0  # windows: stream position of the next window
  num_docs = 0
  emitted = 0

  def take_pending() -> None:
    nonlocal buf_tok, buf_doc, pending, pending_tokens, num_docs
    lengths_D = np.array([len(d) + 2 for d in pending], np.int64)
    stream = np.empty(int(lengths_D.sum()), np.int32)
    ends_D = np.cumsum(lengths_D)
    for doc, start, end in zip(pending, ends_D - lengths_D, ends_D, strict=True):
      stream[start] = bos_id
      stream[start + 1:end - 1] = doc
      stream[end - 1] = eos_id
    doc_ids = np.repeat(np.arange(num_docs, num_docs + len(pending), dtype=np.int64), lengths_D)
    num_docs += len(pending)
    buf_tok = np.concatenate([buf_tok, stream])
    buf_doc = np.concatenate([buf_doc, doc_ids])
    pending, pending_tokens = [], 0

  def full_rows() -> tuple[np.ndarray, np.ndarray] | None:
    nonlocal buf_tok, buf_doc, offset, next_start, emitted
    if windows:
      end = offset + len(buf_tok)
      block = None
      if end - row_len >= next_start:
        starts_N = np.arange(next_start, end - row_len + 1, stride) - offset
        window_NL = starts_N[:, None] + np.arange(row_len)
        tokens_NL, doc_NL = buf_tok[window_NL], buf_doc[window_NL]
        block = tokens_NL, (doc_NL - doc_NL[:, :1] + 1).astype(np.int32)
        next_start = int(starts_N[-1]) + offset + stride
      # Tokens before the next window are done with (stride <= row_len keeps the cut
      # inside the buffer; before the first window nothing is cut).
      cut = min(next_start - offset, len(buf_tok))
    else:
      n = len(buf_tok) // row_len
      cut = n * row_len
      block = None
      if n:
        doc_NL = buf_doc[:cut].reshape(n, row_len)
        block = (buf_tok[:cut].reshape(n, row_len),
                 (doc_NL - doc_NL[:, :1] + 1).astype(np.int32))
    buf_tok, buf_doc = buf_tok[cut:].copy(), buf_doc[cut:].copy()
    offset += cut
    if block is not None:
      emitted += len(block[0])
    return block

  for doc in docs:
    pending.append(doc)
    pending_tokens += len(doc) + 2
    if pending_tokens >= chunk_tokens:
      take_pending()
      block = full_rows()
      if block is not None:
        yield block
  if pending:
    take_pending()
  block = full_rows()
  if block is not None:
    yield block
  if windows and emitted:
    return  # the tail shorter than a window is dropped, as pack() does
  if len(buf_tok):  # the last, padded row
    pad = row_len - len(buf_tok)
    tokens_L = np.concatenate([buf_tok, np.full(pad, pad_id, np.int32)])
    doc_L = np.concatenate([buf_doc, np.full(pad, -1, np.int64)])
    segments_L = np.where(doc_L >= 0, doc_L - doc_L[0] + 1, 0).astype(np.int32)
    yield tokens_L[None], segments_L[None]


class ShardWriter:
  """Rows into ArrayRecord files `<prefix>-00000.array_record`, ... of at most
  `rows_per_shard` rows each, every shard written as soon as it fills (written in
  `write_rows`' record format). `close()` returns the shard file names in order."""

  def __init__(self, directory: pathlib.Path, prefix: str, rows_per_shard: int):
    if rows_per_shard < 1:
      raise ValueError(f'rows_per_shard={rows_per_shard} must be >= 1')
    self.directory, self.prefix, self.rows_per_shard = directory, prefix, rows_per_shard
    self.names: list[str] = []
    self.rows = 0
    self._writer = None
    self._in_shard = 0

  def write(self, tokens_NL: np.ndarray, segments_NL: np.ndarray) -> None:
    for tokens_L, segments_L in zip(tokens_NL.astype('<i4'), segments_NL.astype('<i4'),
                                    strict=True):
      if self._writer is None:
        self.names.append(f'{self.prefix}-{len(self.names):05d}.array_record')
        self._writer = array_record_module.ArrayRecordWriter(
            str(self.directory / self.names[-1]), 'group_size:1')
      self._writer.write(tokens_L.tobytes() + segments_L.tobytes())
      self.rows += 1
      self._in_shard += 1
      if self._in_shard == self.rows_per_shard:
        self._close_shard()

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self._writer, self._in_shard = None, 0

  def close(self) -> list[str]:
    self._close_shard()
    return list(self.names)


class RoundRobinWriter:
  """Rows into exactly `num_shards` ArrayRecord files `<prefix>-00000.array_record`, ...:
  row r of the stream goes to shard r % num_shards (its row r // num_shards), so shard
  sizes differ by at most one row. All shards are open while writing (one writer each)."""

  def __init__(self, directory: pathlib.Path, prefix: str, num_shards: int):
    if num_shards < 1:
      raise ValueError(f'num_shards={num_shards} must be >= 1')
    self.names = [f'{prefix}-{g:05d}.array_record' for g in range(num_shards)]
    self._writers = [array_record_module.ArrayRecordWriter(str(directory / n), 'group_size:1')
                     for n in self.names]
    self.rows = 0

  def write(self, tokens_NL: np.ndarray, segments_NL: np.ndarray) -> None:
    for tokens_L, segments_L in zip(tokens_NL.astype('<i4'), segments_NL.astype('<i4'),
                                    strict=True):
      self._writers[self.rows % len(self._writers)].write(
          tokens_L.tobytes() + segments_L.tobytes())
      self.rows += 1

  def shard_rows(self) -> list[int]:
    n = len(self._writers)
    return [self.rows // n + (1 if g < self.rows % n else 0) for g in range(n)]

  def close(self) -> list[str]:
    for w in self._writers:
      w.close()
    return list(self.names)


def interleave(shards_N2L: Sequence[np.ndarray]) -> np.ndarray:
  """[N, 2, L] the stream's rows from RoundRobinWriter's shards (row r from shard r % S)."""
  total = sum(len(x) for x in shards_N2L)
  out = np.empty((total,) + shards_N2L[0].shape[1:], np.int32)
  for g, rows in enumerate(shards_N2L):
    out[g::len(shards_N2L)] = rows
  return out


def write_rows(path: pathlib.Path, tokens_NL: np.ndarray, segments_NL: np.ndarray) -> None:
  """One ArrayRecord record per row (tokens then segments, int32 little-endian)."""
  writer = array_record_module.ArrayRecordWriter(str(path), 'group_size:1')
  for tokens_L, segments_L in zip(tokens_NL.astype('<i4'), segments_NL.astype('<i4'), strict=True):
    writer.write(tokens_L.tobytes() + segments_L.tobytes())
  writer.close()


def parse_row(record: bytes) -> np.ndarray:
  """[2, L] int32: tokens, segments."""
  return np.frombuffer(record, '<i4').reshape(2, -1).astype(np.int32)


def rows_to_batch(rows_B2L: np.ndarray) -> dict[str, np.ndarray]:
  """Model inputs from packed rows: all [B, T] with T = L - 1."""
  tokens_BL, segments_BL = rows_B2L[:, 0], rows_B2L[:, 1]
  seg_in_BT, seg_out_BT = segments_BL[:, :-1], segments_BL[:, 1:]
  T = seg_in_BT.shape[1]
  index_T = np.arange(T, dtype=np.int32)
  starts_BT = np.ones_like(seg_in_BT, dtype=bool)
  starts_BT[:, 1:] = seg_in_BT[:, 1:] != seg_in_BT[:, :-1]
  last_start_BT = np.maximum.accumulate(np.where(starts_BT, index_T, 0), axis=1)
  positions_BT = np.where(seg_in_BT != 0, index_T - last_start_BT, 0)
  weights_BT = (seg_out_BT == seg_in_BT) & (seg_out_BT != 0)
  return {
      'inputs': np.ascontiguousarray(tokens_BL[:, :-1], np.int32),
      'targets': np.ascontiguousarray(tokens_BL[:, 1:], np.int32),
      'segment_ids': np.ascontiguousarray(seg_in_BT, np.int32),
      'positions': positions_BT.astype(np.int32),
      'weights': weights_BT.astype(np.float32),
  }
