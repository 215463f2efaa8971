"""A Hugging Face `tokenizers` tokenizer (tokenizer.json), as an imported model brings it.

Nothing is trained: `from_hf_dir` reads an HF tokenizer directory (tokenizer.json, and
bos/eos/pad names from tokenizer_config.json or special_tokens_map.json) and `save`
copies the file next to the prepared data. Ids are the HF ids, so an imported model
sees the tokens it was trained on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers

from lm.data.errors import DataError
from lm.data.tokenizers.base import META_FILE, Tokenizer

HF_FILE = 'tokenizer.json'  # the HF tokenizer in an HF directory
SAVED_FILE = 'hf_tokenizer.json'  # its copy in our tokenizer directory (tokenizer.json is ours)
# Files of an HF tokenizer directory that name its special tokens (copied along on export).
CONFIG_FILE, SPECIAL_TOKENS_FILE = 'tokenizer_config.json', 'special_tokens_map.json'
SPECIAL_FILES = (CONFIG_FILE, SPECIAL_TOKENS_FILE)
# The chat template, when transformers saved it in a file of its own (it wins over
# tokenizer_config.json's "chat_template"; lm.serve renders chats with it).
CHAT_TEMPLATE_FILE = 'chat_template.jinja'


@functools.lru_cache(maxsize=1)
def _byte_level_chars() -> dict[str, int]:
  """GPT-2's byte-level alphabet: the character that stands for each byte value.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in byte order,
  to the characters U+0100, U+0101, ..."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + extra)] = b
      extra += 1
  return chars


def _token_name(value: Any) -> str | None:
  """A special token from tokenizer_config.json: a string or {'content': ...}."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) else None


def read_special_files(directory) -> dict[str, dict]:
  """{file name: its JSON object} of the SPECIAL_FILES `directory` (a pathlib or epath
  Path) holds; DataError naming the file when one is not a JSON object."""
  files = {}
  for name in SPECIAL_FILES:
    path = directory / name
    if not path.is_file():
      continue
    try:
      meta = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f'{path} is not valid JSON ({e}); fix or remove it') from None
    if not isinstance(meta, dict):
      raise DataError(f'{path} must hold a JSON object, got {type(meta).__name__}')
    files[name] = meta
  return files


def special_tokens(files: dict[str, dict], keys: tuple[str, ...]) -> dict[str, str]:
  """{key: token} for the `keys` (e.g. 'eos_token') the files of `read_special_files` name,
  tokenizer_config.json's before special_tokens_map.json's."""
  tokens: dict[str, str] = {}
  for name in SPECIAL_FILES:
    for key in keys:
      token = _token_name(files.get(name, {}).get(key))
      if token is not None:
        tokens.setdefault(key, token)
  return tokens


def file_digest(directory: str | pathlib.Path) -> str:
  """A digest of the HF files in `directory` (names the tokenizer in the data cache)."""
  directory = pathlib.Path(directory)
  h = hashlib.sha1()
  for name in (HF_FILE, *SPECIAL_FILES):
    if (directory / name).is_file():
      h.update(name.encode() + b'\0' + (directory / name).read_bytes())
  return h.hexdigest()[:10]


def check_dir(directory: str | pathlib.Path, field: str = 'data.tokenizer.path') -> pathlib.Path:
  """The directory as a Path; DataError naming `field` when it has no tokenizer.json."""
  path = pathlib.Path(directory).expanduser()
  if not str(directory):
    raise DataError(f"{field} is empty; data.tokenizer.kind='hf' needs a directory holding "
                    'a Hugging Face tokenizer.json.')
  if not (path / HF_FILE).is_file():
    raise DataError(f'{field}={str(directory)!r} holds no {HF_FILE}; give the directory of a '
                    'Hugging Face tokenizer (as save_pretrained writes it).')
  return path


class HFTokenizer(Tokenizer):
  kind = 'hf'

  def __init__(self, tokenizer_json: str, *, bos_id: int, eos_id: int, pad_id: int):
    self._json = tokenizer_json
    self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    n = self._tok.get_vocab_size(with_added_tokens=True)
    self._special = {t.content for t in self._tok.get_added_tokens_decoder().values()
                     if t.special}
    for name, i in (('bos', bos_id), ('eos', eos_id), ('pad', pad_id)):
      if not 0 <= i < n:
        raise DataError(f'the HF tokenizer\'s {name} id {i} is outside its vocabulary of {n}')
    self._byte_lengths = self._compute_byte_lengths()

  @classmethod
  def from_hf_dir(cls, directory: str | pathlib.Path) -> HFTokenizer:
    """The tokenizer of an HF directory; bos/eos/pad from its tokenizer_config.json or
    special_tokens_map.json, or its one special token (GPT-2's <|endoftext|>) for all."""
    directory = check_dir(directory)
    text = (directory / HF_FILE).read_text(encoding='utf-8')
    try:
      tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the tokenizers library raises its own Exception type
      raise DataError(f'{directory / HF_FILE} does not load as a Hugging Face tokenizer: '
                      f'{e}') from e
    found = special_tokens(read_special_files(directory), ('bos_token', 'eos_token', 'pad_token'))
    names = {key.removesuffix('_token'): token for key, token in found.items()}
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    if 'eos' not in names and len(specials) == 1:
      names['eos'] = specials[0]
    if 'eos' not in names:
      raise DataError(f'cannot tell the end-of-text token of the tokenizer in {directory}: add '
                      'a tokenizer_config.json with "eos_token" (and "bos_token").')
    ids = {}
    for role in ('eos', 'bos', 'pad'):
      token = names.get(role, names['eos'])  # no bos/pad: the end-of-text token serves
      ids[role] = tok.token_to_id(token)
      if ids[role] is None:
        raise DataError(f'{directory}: the {role} token {token!r} is not in {HF_FILE}.')
    return cls(text, bos_id=ids['bos'], eos_id=ids['eos'], pad_id=ids['pad'])

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    n = self.vocab_size
    return self._tok.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens=True)

  def byte_lengths(self) -> np.ndarray:
    return self._byte_lengths.copy()

  def _compute_byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes per id: byte-level tokens count their bytes, '<0xAB>' pieces one byte,
    SentencePiece-style pieces their text with '▁' as a space; special tokens 0."""
    decoder = json.loads(self._json).get('decoder') or {}
    byte_level = decoder.get('type') == 'ByteLevel'
    chars = _byte_level_chars()
    lengths_V = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      piece = self._tok.id_to_token(i)
      if piece is None or piece in self._special:
        continue
      if byte_level and all(c in chars for c in piece):
        lengths_V[i] = len(piece)
      elif len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
        lengths_V[i] = 1
      else:
        lengths_V[i] = len(piece.replace('\u2581', ' ').encode('utf-8'))
    return lengths_V

  def _save_files(self, directory: pathlib.Path) -> dict[str, Any]:
    (directory / SAVED_FILE).write_text(self._json, encoding='utf-8')
    return {'file': SAVED_FILE, 'bos_id': self.bos_id, 'eos_id': self.eos_id,
            'pad_id': self.pad_id}

  @classmethod
  def load(cls, directory: pathlib.Path) -> HFTokenizer:
    meta = json.loads((directory / META_FILE).read_text())
    return cls((directory / SAVED_FILE).read_text(encoding='utf-8'), bos_id=meta['bos_id'],
               eos_id=meta['eos_id'], pad_id=meta['pad_id'])


def vocab_size_of(directory: str | pathlib.Path) -> int:
  """Number of ids (added tokens included) of the tokenizer.json in `directory`."""
  path = check_dir(directory) / HF_FILE
  try:
    return tokenizers.Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
  except Exception as e:  # the tokenizers library raises its own Exception type
    raise DataError(f'{path} does not load as a Hugging Face tokenizer: {e}') from e
