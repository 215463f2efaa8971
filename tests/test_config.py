"""lm.config: every check names its key, resolve fills derived values, JSON round trips."""

import copy
from typing import Any

import ml_collections
import pytest

from configs import default
from lm import config as config_lib
from lm.config import ConfigError

_DELETE = object()


def _config(updates: dict[str, Any]) -> ml_collections.ConfigDict:
  """The default config with dotted-key updates, built without ConfigDict's type safety
  (as a config file that builds its own sections would be)."""
  d = copy.deepcopy(default.get_config().to_dict())
  for key, value in updates.items():
    *parents, leaf = key.split('.')
    node = d
    for p in parents:
      node = node.setdefault(p, {})
    if value is _DELETE:
      del node[leaf]
    else:
      node[leaf] = value
  return ml_collections.ConfigDict(d)


def _error(updates: dict[str, Any], num_devices: int = 8) -> str:
  with pytest.raises(ConfigError) as e:
    config_lib.validate(_config(updates), num_devices=num_devices)
  return str(e.value)


BAD = {
    # structure and types
    'unknown key': ({'model.widht': 300}, ["'model.widht'", "did you mean 'model.width'"]),
    'unknown section': ({'modle': {'width': 1}}, ["'modle'", "'model'"]),
    'key in wrong section': ({'model.seq_len': 128}, ["'model.seq_len'", "'data.seq_len'"]),
    'missing key': ({'train.steps': _DELETE}, ["'train.steps'", 'configs.default.get_config()']),
    'str for int': ({'model.width': '256'}, ['model.width', 'int']),
    'float for int': ({'train.batch_size': 16.0}, ['train.batch_size', 'int']),
    'int for bool': ({'model.use_bias': 1}, ['model.use_bias', 'bool']),
    'bool for int': ({'train.steps': True}, ['train.steps', 'int']),
    'str for float': ({'optimizer.lr': 'fast'}, ['optimizer.lr', 'int or float']),
    'value for section': ({'checkpoint': 5}, ["'checkpoint'"]),
    'rules not pairs': ({'mesh.rules': (('batch', ('data',), 'x'),)}, ['mesh.rules[0]']),
    'rules unknown mesh axis': ({'mesh.rules': (('batch', ('data',)), ('embed', ('fdsp',)))},
                                ['mesh.rules[1]', 'fdsp']),
    'rules repeated name': ({'mesh.rules': (('embed', ()), ('embed', ('fsdp',)))},
                            ['mesh.rules[1]', "'embed'"]),
    # ranges
    'val_fraction 0': ({'data.val_fraction': 0.0}, ['data.val_fraction', '0 < value < 1']),
    'val_fraction 1': ({'data.val_fraction': 1}, ['data.val_fraction']),
    'dropout 1': ({'model.dropout': 1.0}, ['model.dropout']),
    'negative lr': ({'optimizer.lr': -1e-3}, ['optimizer.lr', '> 0']),
    'min_lr above lr': ({'optimizer.min_lr': 1.0}, ['optimizer.min_lr', 'optimizer.lr']),
    'negative warmup': ({'optimizer.warmup_steps': -5}, ['optimizer.warmup_steps']),
    'negative max_docs': ({'data.max_docs': -1}, ['data.max_docs=-1', '0: all documents']),
    # model shape
    'width % heads': ({'model.width': 250, 'model.num_heads': 4, 'model.num_kv_heads': 4},
                      ['model.width=250 is not divisible by model.num_heads=4']),
    'heads % kv_heads': ({'model.num_heads': 4, 'model.num_kv_heads': 3},
                         ['model.num_heads=4', 'model.num_kv_heads=3']),
    'rope odd head_dim': ({'model.width': 12, 'model.num_heads': 4, 'model.num_kv_heads': 4},
                          ['model.position', 'model.width/model.num_heads']),
    'learned positions too short': ({'model.position': 'learned', 'model.max_len': 128,
                                     'data.seq_len': 256},
                                    ['model.max_len=128', 'data.seq_len=256']),
    'model vocab below tokenizer': ({'model.vocab_size': 1000}, ['model.vocab_size=1000']),
    # mesh
    'mesh product': ({'mesh.data': 2, 'mesh.tensor': 2},
                     ['2*1*1*2 = 4', 'this run has 8', 'mesh.data=-1']),
    'two wildcards': ({'mesh.fsdp': -1}, ['mesh.data', 'mesh.fsdp', 'more than one']),
    'wildcard does not divide': ({'mesh.tensor': 3, 'model.num_heads': 6, 'model.num_kv_heads': 6,
                                  'model.width': 384, 'model.mlp_dim': 768},
                                 ['mesh.data=-1', '8 devices', 'mesh.tensor=3']),
    'zero mesh size': ({'mesh.fsdp': 0}, ['mesh.fsdp=0']),
    'tensor vs kv_heads': ({'model.num_heads': 8, 'model.num_kv_heads': 2, 'mesh.tensor': 4},
                           ['mesh.tensor=4', 'model.num_kv_heads=2']),
    'tensor vs heads': ({'model.num_heads': 6, 'model.num_kv_heads': 6, 'model.width': 384,
                         'mesh.tensor': 4}, ['mesh.tensor=4', 'model.num_heads=6']),
    'tensor vs mlp_dim': ({'model.mlp_dim': 770, 'mesh.tensor': 4}, ['model.mlp_dim=770']),
    'fsdp vs width': ({'model.width': 260, 'model.num_heads': 4, 'mesh.fsdp': 8, 'mesh.data': 1,
                       'model.position': 'learned'}, ['mesh.fsdp=8', 'model.width=260']),
    # batch and cadence
    'batch % grad_accum': ({'train.grad_accum': 3}, ['train.batch_size=16', 'train.grad_accum=3']),
    'batch % data*fsdp': ({'train.batch_size': 12}, ['train.batch_size=12', 'mesh.data*mesh.fsdp']),
    'microbatch % data*fsdp': ({'train.grad_accum': 4}, ['train.grad_accum', '16/4 = 4']),
    'log_every': ({'train.log_every': 15}, ['train.log_every=15', 'train.steps_per_dispatch=10']),
    'eval_every': ({'train.eval_every': 255}, ['train.eval_every=255']),
    'checkpoint.every': ({'checkpoint.every': 505}, ['checkpoint.every=505']),
    # data
    'text without path': ({'data.source': 'text'}, ['data.path is empty']),
    'text path missing': ({'data.source': 'text', 'data.path': 'x'},
                          [("data.path='x' matches no file; give a .txt/.jsonl file, a directory "
                            'or a glob')]),
    'tfds without name': ({'data.source': 'tfds'}, ['data.tfds_name']),
    'tfds without split': ({'data.source': 'tfds', 'data.tfds_name': 'x', 'data.tfds_split': ''},
                           ['data.tfds_split']),
    'sentencepiece vocab too small': ({'data.tokenizer.vocab_size': 100},
                                      ['data.tokenizer.vocab_size=100', '256']),
}
BAD.update({f'enum {key}': ({key: 'bogus'}, [f"{key}='bogus'", *map(repr, allowed)])
            for key, allowed in config_lib.ENUMS.items()})
BAD.update({f'non-positive {key}': ({key: 0}, [f'{key}=0', 'positive'])
            for key in config_lib.POSITIVE_INTS})


@pytest.mark.parametrize('name', list(BAD), ids=list(BAD))
def test_each_problem_names_its_key(name):
  updates, expected = BAD[name]
  message = _error(updates)
  for text in expected:
    assert text in message, f'{text!r} not in: {message}'


def test_enum_typo_gets_a_suggestion():
  assert "did you mean 'rmsnorm'" in _error({'model.norm': 'rms_norm'})


def test_all_problems_are_reported_at_once():
  with pytest.raises(ConfigError) as e:
    config_lib.validate(_config({'model.width': 250, 'train.log_every': 15,
                                 'model.norm': 'rms'}), num_devices=8)
  assert len(e.value.problems) == 3


@pytest.mark.parametrize('num_devices', [1, 8])
def test_default_config_validates(num_devices):
  config_lib.validate(default.get_config(), num_devices=num_devices)


def test_accepted_variants(tmp_path):
  (tmp_path / 'a.txt').write_text('hello')
  ok = [
      {'optimizer.lr': 1, 'model.dropout': 0},  # int where a float is expected
      {'mesh.rules': [['batch', ['data', 'fsdp']], ['embed', 'fsdp'], ['vocab', '']]},  # lists
      {'data.source': 'text', 'data.path': str(tmp_path / 'a.txt')},
      {'data.source': 'text', 'data.path': str(tmp_path)},
      {'data.source': 'text', 'data.path': str(tmp_path / '*.txt')},
      {'data.tokenizer.kind': 'byte', 'data.tokenizer.vocab_size': 0},  # unused for bytes
      {'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2},
      {'mesh.data': 1, 'mesh.fsdp': -1},
  ]
  for updates in ok:
    config_lib.validate(_config(updates), num_devices=8)


def test_resolve_fills_derived_values():
  config = default.get_config()
  for n in (1, 8):
    resolved = config_lib.resolve(config, num_devices=n)
    assert (resolved.mesh.data, resolved.mesh.fsdp, resolved.mesh.tensor) == (n, 1, 1)
    assert resolved.model.max_len == config.data.seq_len > 0
    assert resolved.model.vocab_size == 0  # the tokenizer fills it later
  assert config.mesh.data == -1 and config.model.max_len == 0  # the input is not modified

  resolved = config_lib.resolve(_config({'mesh.data': 2, 'mesh.fsdp': -1, 'model.max_len': 512}),
                                num_devices=8)
  assert (resolved.mesh.data, resolved.mesh.fsdp) == (2, 4)
  assert resolved.model.max_len == 512

  with pytest.raises(ConfigError, match='model.width'):
    config_lib.resolve(_config({'model.width': 250}), num_devices=8)


def test_json_round_trip():
  config = config_lib.resolve(default.get_config(), num_devices=8)
  config.model.vocab_size = 2048
  text = config_lib.to_json(config)
  back = config_lib.from_json(text)
  assert back == config
  assert back.mesh.rules == config.mesh.rules and isinstance(back.mesh.rules[0][1], tuple)
  assert config_lib.to_json(back) == text
  config_lib.validate(back, num_devices=8)
  with pytest.raises(ConfigError, match='does not parse'):
    config_lib.from_json('{"model": ')


def test_check_known_keys_against_a_given_base():
  base = ml_collections.ConfigDict({'a': 1, 'sub': {'beta': 2}})
  config_lib.check_known_keys(ml_collections.ConfigDict({'a': 5, 'sub': {'beta': 3}}), base)
  with pytest.raises(ConfigError, match=r"'sub\.betta'.*did you mean 'sub\.beta'"):
    config_lib.check_known_keys(
        ml_collections.ConfigDict({'a': 5, 'sub': {'beta': 3, 'betta': 4}}), base)
  with pytest.raises(ConfigError, match="missing key 'sub.beta'"):
    config_lib.check_known_keys(ml_collections.ConfigDict({'a': 5, 'sub': {}}), base)


def test_derived_config_that_adds_a_key_is_rejected():
  config = default.get_config()  # what a named config in configs/ starts from
  config.train.lr = 1e-3  # belongs in optimizer.lr
  with pytest.raises(ConfigError, match=r"'train\.lr'.*did you mean 'optimizer\.lr'"):
    config_lib.validate(config, num_devices=8)
