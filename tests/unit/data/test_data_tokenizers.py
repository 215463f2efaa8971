"""Tokenizers round-trip losslessly and report byte lengths consistent with decode."""

import numpy as np
import pytest

from configs.default import get_config
from lm.data import DataError, sources, tokenizers
from lm.data.tokenizers import spm

TRICKY = [
    'def f(x):\n\tif x:\n\t\treturn  x   # tab, runs of spaces\r\n\n\n',
    '    leading spaces and trailing   ',
    'unicode: déjà vu, 中文, Ελληνικά, emoji 😀👍🏽, math ∑∫',
    'sentencepiece marker ▁ and ▁▁ runs, nbsp\u00a0, zero width\u200b, bom \ufeff',
    'controls \x00\x01\x07 and \x0b\x0c form feeds',
    '1234567890 3.14159 0xDEADBEEF',
    '\n',
    ' ',
]


@pytest.fixture(scope='module')
def stdlib_texts() -> list[str]:
  c = get_config().data
  c.max_docs = 40
  return [d.text for d in sources.read(c).documents]


def _tok_cfg(kind: str, model_type: str = 'bpe', vocab_size: int = 512):
  c = get_config().data.tokenizer
  c.kind, c.model_type, c.vocab_size = kind, model_type, vocab_size
  c.max_train_chars = 400_000
  return c


@pytest.fixture(scope='module', params=[('sentencepiece', 'bpe'), ('sentencepiece', 'unigram'),
                                        ('byte', ''), ('char', '')])
def tokenizer(request, stdlib_texts, tmp_path_factory):
  kind, model_type = request.param
  directory = tmp_path_factory.mktemp(f'tok-{kind}-{model_type}')
  train_texts = stdlib_texts[:30] + (TRICKY if kind == 'char' else [])
  tokenizers.train(_tok_cfg(kind, model_type or 'bpe'), train_texts, directory, log=lambda _: None)
  return tokenizers.load(directory)


def test_specials_and_vocab(tokenizer):
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  expected = {'byte': 259, 'sentencepiece': 512}.get(tokenizer.kind)
  if expected:
    assert tokenizer.vocab_size == expected
  ids = tokenizer.encode('hello world\n')
  assert ids and not {0, 1, 2} & set(ids)
  assert all(isinstance(i, int) for i in ids)


def test_round_trip_is_lossless(tokenizer, stdlib_texts):
  for text in TRICKY + stdlib_texts:  # 10 held-out stdlib files too
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_matches_encode(tokenizer, stdlib_texts):
  texts = TRICKY + stdlib_texts[30:]
  batch = tokenizer.encode_batch(texts)
  for text, ids in zip(texts, batch, strict=True):
    assert ids.dtype == np.int32 and ids.tolist() == tokenizer.encode(text)


def test_byte_lengths_sum_to_utf8_length(tokenizer, stdlib_texts):
  lengths_V = tokenizer.byte_lengths()
  assert lengths_V.shape == (tokenizer.vocab_size,) and lengths_V.dtype == np.int32
  assert lengths_V[[0, 1, 2]].tolist() == [0, 0, 0]
  for text in TRICKY + stdlib_texts[30:]:
    ids = tokenizer.encode(text)
    assert int(lengths_V[ids].sum()) == len(tokenizer.decode(ids).encode('utf-8'))


def test_decode_drops_specials_and_out_of_range_ids(tokenizer):
  ids = tokenizer.encode('abc')
  assert tokenizer.decode([1] + ids + [2, 0, tokenizer.vocab_size + 7]) == 'abc'


def test_sentencepiece_learns_code_pieces(stdlib_texts, tmp_path):
  tokenizers.train(_tok_cfg('sentencepiece', 'bpe', 1024), stdlib_texts, tmp_path, lambda _: None)
  tok = tokenizers.load(tmp_path)
  text = ''.join(stdlib_texts[30:])
  assert len(text.encode('utf-8')) / len(tok.encode(text)) > 2.0  # merges, not bytes
  assert len(tok.encode('\n        return self\n')) <= 6  # newline/indent pieces


def test_sentencepiece_training_is_deterministic_and_sampled(stdlib_texts):
  a = spm.train(stdlib_texts[:10], model_type='bpe', vocab_size=400, max_chars=50_000)
  b = spm.train(stdlib_texts[:10], model_type='bpe', vocab_size=400, max_chars=50_000)
  assert a == b
  chunks = spm.training_chunks(stdlib_texts[:10], max_chars=0)
  assert ''.join(chunks) == ''.join(stdlib_texts[:10])
  assert max(len(c) for c in chunks) <= spm.CHUNK_CHARS
  sample = spm.training_chunks(stdlib_texts[:10], max_chars=50_000)
  assert 40_000 < sum(len(c) for c in sample) <= 50_000
  assert sample == spm.training_chunks(stdlib_texts[:10], max_chars=50_000)


def test_char_tokenizer_maps_unseen_characters_to_unk(tmp_path):
  tokenizers.train(_tok_cfg('char'), ['abc\n', 'cab'], tmp_path, lambda _: None)
  tok = tokenizers.load(tmp_path)
  assert tok.vocab_size == 4 + 4  # specials + unk, then '\n', 'a', 'b', 'c'
  assert tok.encode('a\nz') == [5, 4, tok.unk_id]
  assert tok.decode(tok.encode('a\nz')) == 'a\n\ufffd'


def test_vocab_size_too_small_is_a_clear_error(stdlib_texts, tmp_path):
  with pytest.raises(DataError, match='data.tokenizer.vocab_size=100'):
    tokenizers.check_config(_tok_cfg('sentencepiece', 'bpe', 100))
  with pytest.raises(DataError, match='data.tokenizer.vocab_size=300'):
    tokenizers.train(_tok_cfg('sentencepiece', 'bpe', 300), TRICKY, tmp_path, lambda _: None)
