"""Tokenizers: train from the training split, save next to the data, load by directory."""

import json
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lm.data.cache import short_hash
from lm.data.errors import DataError
from lm.data.tokenizers import hf, spm
from lm.data.tokenizers.base import META_FILE, Tokenizer
from lm.data.tokenizers.byte import ByteTokenizer
from lm.data.tokenizers.char import CharTokenizer
from lm.data.tokenizers.hf import HFTokenizer
from lm.data.tokenizers.spm import SentencePieceTokenizer

__all__ = [
  'ByteTokenizer',
  'CharTokenizer',
  'HFTokenizer',
  'SentencePieceTokenizer',
  'Tokenizer',
  'check_config',
  'key',
  'load',
  'train',
]

_KINDS = {'sentencepiece': SentencePieceTokenizer, 'byte': ByteTokenizer, 'char': CharTokenizer,
          'hf': HFTokenizer}


def check_config(tok_cfg: Any) -> None:
  if tok_cfg.kind not in _KINDS:
    raise DataError(f'data.tokenizer.kind={tok_cfg.kind!r}: expected one of {sorted(_KINDS)}')
  if tok_cfg.kind == 'sentencepiece':
    if tok_cfg.model_type not in ('bpe', 'unigram'):
      raise DataError(f'data.tokenizer.model_type={tok_cfg.model_type!r}: '
                      "expected 'bpe' or 'unigram'")
    if tok_cfg.vocab_size < 300:
      raise DataError(f'data.tokenizer.vocab_size={tok_cfg.vocab_size} is too small for '
                      'sentencepiece (260 ids go to specials and bytes); use >= 300')
  if tok_cfg.kind == 'hf':
    hf.check_dir(tok_cfg.path)


def key(tok_cfg: Any) -> str:
  """Names the tokenizer within a prepared source: only the fields its kind uses."""
  if tok_cfg.kind == 'hf':  # named by its files' contents, not by where they are
    return f'hf-{hf.file_digest(tok_cfg.path)}'
  if tok_cfg.kind != 'sentencepiece':
    return tok_cfg.kind
  fields = (tok_cfg.model_type, tok_cfg.vocab_size, tok_cfg.max_train_chars)
  return f'sp-{tok_cfg.model_type}-{tok_cfg.vocab_size}-{short_hash(fields, 6)}'


def train(tok_cfg: Any, train_texts: Sequence[str] | Callable[[], Iterable[str]],
          directory: pathlib.Path, log: Callable[[str], None]) -> None:
  """Builds the tokenizer `tok_cfg` describes from the training texts into `directory`.

  `train_texts` may be a function returning a fresh iterator over them (streamed, read
  as often as the kind needs; sentencepiece holds only its max_train_chars sample)."""
  again = train_texts if callable(train_texts) else lambda: train_texts
  if tok_cfg.kind == 'sentencepiece':
    chars = sum(len(t) for t in again())
    log(f'[data] training sentencepiece {tok_cfg.model_type} (vocab {tok_cfg.vocab_size}) on '
        f'{min(chars, tok_cfg.max_train_chars or chars) / 1e6:.1f}M of {chars / 1e6:.1f}M chars')
    tokenizer: Tokenizer = SentencePieceTokenizer(spm.train(
        again, model_type=tok_cfg.model_type, vocab_size=tok_cfg.vocab_size,
        max_chars=tok_cfg.max_train_chars))
  elif tok_cfg.kind == 'hf':
    tokenizer = HFTokenizer.from_hf_dir(tok_cfg.path)  # nothing to train: a copy
  elif tok_cfg.kind == 'char':
    tokenizer = CharTokenizer.train(again())
  else:
    tokenizer = ByteTokenizer()
  tokenizer.save(directory)


def load(directory: str | pathlib.Path) -> Tokenizer:
  """The tokenizer saved in `directory` (its tokenizer.json names the kind)."""
  directory = pathlib.Path(directory)
  meta_path = directory / META_FILE
  if not meta_path.is_file():
    raise DataError(f'{directory} holds no tokenizer ({META_FILE} is missing)')
  meta = json.loads(meta_path.read_text())
  if 'kind' not in meta and 'model' in meta:  # a Hugging Face tokenizer directory as it is
    return HFTokenizer.from_hf_dir(directory)
  kind = meta['kind']
  if kind not in _KINDS:
    raise DataError(f'{meta_path}: unknown tokenizer kind {kind!r}')
  return _KINDS[kind].load(directory)
