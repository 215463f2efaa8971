"""data.tokenizer.kind='hf': a Hugging Face tokenizer.json used as it is (no transformers)."""

import json
import pathlib

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lm import api
from lm.config import ConfigError, validate
from lm.data import DataError, tokenizers

TEXTS = ['the quick brown fox jumps over the lazy dog.', 'héllo wörld, ça va? ✓ 日本語',
         'def f(x):\n    return x * 2\n']


def write_tokenizer(directory: pathlib.Path, specials=('<pad>', '<s>', '</s>'),
                    config: dict | None = None) -> None:
  """A small byte-level BPE (as GPT-2's) trained here, with an optional tokenizer_config."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS * 10, trainers.BpeTrainer(
      vocab_size=320, special_tokens=list(specials), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / 'tokenizer.json'))
  if config is not None:
    (directory / 'tokenizer_config.json').write_text(json.dumps(config))


def test_ids_round_trip_and_byte_lengths_count_utf8_bytes(tmp_path):
  write_tokenizer(tmp_path / 'hf', config={'bos_token': '<s>', 'pad_token': '<pad>',
                                           'eos_token': {'content': '</s>', 'special': True}})
  tok = tokenizers.HFTokenizer.from_hf_dir(tmp_path / 'hf')
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  lengths_V = tok.byte_lengths()
  assert lengths_V.shape == (tok.vocab_size,) and lengths_V[:3].tolist() == [0, 0, 0]
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text  # specials are dropped
    assert int(lengths_V[ids].sum()) == len(text.encode('utf-8'))  # bits/byte is exact
  assert [a.tolist() for a in tok.encode_batch(TEXTS)] == [tok.encode(t) for t in TEXTS]

  # Saved beside prepared data and loaded back by kind, as the data pipeline does.
  cfg = api.load_config('configs/default.py', {'data.tokenizer.kind': 'hf',
                                               'data.tokenizer.path': str(tmp_path / 'hf')})
  tokenizers.check_config(cfg.data.tokenizer)
  (tmp_path / 'saved').mkdir()
  tokenizers.train(cfg.data.tokenizer, [], tmp_path / 'saved', log=lambda _: None)
  loaded = tokenizers.load(tmp_path / 'saved')
  assert isinstance(loaded, tokenizers.HFTokenizer)
  assert loaded.encode(TEXTS[1]) == tok.encode(TEXTS[1]) and loaded.eos_id == 2
  np.testing.assert_array_equal(loaded.byte_lengths(), lengths_V)
  assert tokenizers.key(cfg.data.tokenizer).startswith('hf-')
  # An HF directory as it is loads too (lm.generate --tokenizer_dir=WORKDIR/tokenizer).
  assert tokenizers.load(tmp_path / 'hf').encode(TEXTS[2]) == tok.encode(TEXTS[2])


def test_special_tokens_without_a_config(tmp_path):
  write_tokenizer(tmp_path / 'one', specials=('<|endoftext|>',))  # GPT-2: one token for all
  tok = tokenizers.HFTokenizer.from_hf_dir(tmp_path / 'one')
  assert tok.bos_id == tok.eos_id == tok.pad_id == 0
  write_tokenizer(tmp_path / 'three')
  with pytest.raises(DataError, match='end-of-text token.*tokenizer_config.json'):
    tokenizers.HFTokenizer.from_hf_dir(tmp_path / 'three')
  write_tokenizer(tmp_path / 'typo', config={'eos_token': '<eos>'})
  with pytest.raises(DataError, match="eos token '<eos>' is not in tokenizer.json"):
    tokenizers.HFTokenizer.from_hf_dir(tmp_path / 'typo')


def test_config_names_a_missing_tokenizer_and_a_small_vocabulary(tmp_path):
  cfg = api.load_config('configs/default.py', {'data.tokenizer.kind': 'hf',
                                               'data.tokenizer.path': str(tmp_path)})
  with pytest.raises(ConfigError, match='data.tokenizer.path=.* holds no tokenizer.json'):
    validate(cfg, num_devices=8)
  write_tokenizer(tmp_path, config={'eos_token': '</s>'})
  cfg.model.vocab_size = 100
  with pytest.raises(ConfigError, match=r'model.vocab_size=100 is smaller than the \d+ ids'):
    validate(cfg, num_devices=8)
  cfg.model.vocab_size = 0  # 0: the tokenizer's size
  validate(cfg, num_devices=8)
