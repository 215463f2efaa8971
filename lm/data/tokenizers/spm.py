"""SentencePiece (BPE or unigram) trained on the training split, lossless on any text.

Losslessness comes from: identity normalization, no whitespace folding, no dummy
prefix, byte fallback (any character without a piece becomes its UTF-8 bytes) and
whitespace-only pieces (indentation). Newlines are ordinary characters: the trainer
sees multi-line chunks, so pieces like ':\\n' or '\\n\\n' are learned. The one
character SentencePiece cannot keep is its own space marker U+2581 ('▁'); `encode`
spells it with its three byte pieces, which decode back to '▁'.
"""

import io
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sentencepiece

from lm.data.errors import DataError
from lm.data.tokenizers.base import Tokenizer

MODEL_FILE = 'spm.model'
NUM_THREADS = 2
CHUNK_CHARS = 4096  # training "sentences" are chunks of whole lines up to this size
_SAMPLE_SEED = 20_240_917  # fixed: the tokenizer must not depend on the training seed
_SPACE = '\u2581'


def _chunks(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    current = ''
    for line in text.splitlines(keepends=True):
      while len(line) > CHUNK_CHARS:  # minified or binary-ish text
        yield line[:CHUNK_CHARS]
        line = line[CHUNK_CHARS:]
      if current and len(current) + len(line) > CHUNK_CHARS:
        yield current
        current = ''
      current += line
    if current:
      yield current


def training_chunks(texts: Sequence[str] | Callable[[], Iterable[str]],
                    max_chars: int) -> list[str]:
  """Texts cut into multi-line chunks; a deterministic sample of at most max_chars.

  `texts` may be a function returning a fresh iterator: then the texts are streamed
  twice (chunk lengths, then the sampled chunks) and only the sample is held."""
  again = texts if callable(texts) else lambda: texts
  lengths = np.fromiter((len(c) for c in _chunks(again())), np.int64)
  if not (max_chars and int(lengths.sum()) > max_chars):
    return list(_chunks(again()))
  order = np.random.default_rng(_SAMPLE_SEED).permutation(len(lengths))
  keep = np.zeros(len(lengths), bool)
  keep[order[np.cumsum(lengths[order]) <= max_chars]] = True
  return [c for c, k in zip(_chunks(again()), keep, strict=True) if k]


def train(texts: Sequence[str] | Callable[[], Iterable[str]], *, model_type: str,
          vocab_size: int, max_chars: int) -> bytes:
  """Trains a model on `texts`; returns the serialized model."""
  chunks = training_chunks(texts, max_chars)
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks), model_writer=model,
        model_type=model_type, vocab_size=vocab_size,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, byte_fallback=True, allow_whitespace_only_pieces=True,
        split_digits=True, character_coverage=0.9995, hard_vocab_limit=False,
        max_sentence_length=4 * CHUNK_CHARS + 16, input_sentence_size=0,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        num_threads=NUM_THREADS, minloglevel=2)
  except RuntimeError as e:
    raise DataError(f'data.tokenizer.vocab_size={vocab_size}: sentencepiece could not train '
                    f'({e}); a vocabulary needs 260 ids for specials and bytes plus room for '
                    'the corpus characters and merges: raise data.tokenizer.vocab_size') from e
  return model.getvalue()


class SentencePieceTokenizer(Tokenizer):
  kind = 'sentencepiece'

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    assert (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()) == (0, 1, 2)
    self.unk_id = self._sp.unk_id()
    self._space_ids = [self._sp.piece_to_id(f'<0x{b:02X}>') for b in _SPACE.encode('utf-8')]
    self._byte_lengths = self._compute_byte_lengths()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0].tolist()

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    out: list[np.ndarray | None] = [None] * len(texts)
    plain = [i for i, t in enumerate(texts) if _SPACE not in t]
    ids = self._sp.encode([texts[i] for i in plain], num_threads=NUM_THREADS)
    for i, row in zip(plain, ids, strict=True):
      out[i] = np.asarray(row, np.int32)
    for i, t in enumerate(texts):
      if out[i] is None:
        out[i] = np.asarray(self._encode_with_space_marks(t), np.int32)
    return out  # type: ignore[return-value]

  def _encode_with_space_marks(self, text: str) -> list[int]:
    ids: list[int] = []
    for k, part in enumerate(text.split(_SPACE)):
      if k:
        ids.extend(self._space_ids)
      ids.extend(self._sp.encode(part))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(self._valid(ids))

  def byte_lengths(self) -> np.ndarray:
    return self._byte_lengths.copy()

  def _compute_byte_lengths(self) -> np.ndarray:
    sp = self._sp
    lengths_V = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if sp.is_control(i):
        continue
      if sp.is_byte(i):
        lengths_V[i] = 1
      elif sp.is_unknown(i):
        lengths_V[i] = len(sp.decode([i]).encode('utf-8'))
      else:
        lengths_V[i] = len(sp.id_to_piece(i).replace(_SPACE, ' ').encode('utf-8'))
    return lengths_V

  def _save_files(self, directory: pathlib.Path) -> dict[str, Any]:
    (directory / MODEL_FILE).write_bytes(self._proto)
    return {'file': MODEL_FILE}

  @classmethod
  def load(cls, directory: pathlib.Path) -> 'SentencePieceTokenizer':
    return cls((directory / MODEL_FILE).read_bytes())
