"""Concat-then-split packing into rows of seq_len + 1 tokens, and rows -> model batches.

Shapes: N rows, L = seq_len + 1 tokens per packed row, B rows per batch, T = seq_len.
Each document is [bos] + tokens + [eos]; documents are concatenated in a fixed
shuffled order and cut into rows, so a document may continue into the next row.
`segments` numbers the document pieces of a row 1, 2, 3, ... (0 = padding, only at
the end of the last row). A row is stored as one ArrayRecord record: the int32
bytes of tokens_L followed by those of segments_L.
"""

import pathlib
from collections.abc import Sequence

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
