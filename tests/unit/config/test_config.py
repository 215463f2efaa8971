"""lm.config: every check names its key, resolve fills derived values, JSON round trips,
config files that do not load name the file and line."""

import copy
import os
import pathlib
import subprocess
import sys
from typing import Any

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default
from lm import config as config_lib
from lm.config import ConfigError
from lm.model import lora
from lm.parallel import axes
from lm.train import optimizer

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
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
                     ['2*1*1*1*2 = 4', 'this run has 8', 'mesh.data=-1']),
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
  config = default.get_config()
  config.mesh.rules = (('vocab', ()), ('embed', ('fsdp',)))
  config = config_lib.resolve(config, num_devices=8)
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


# ---- bad input named by key or file (issue 11) ------------------------------------------

BAD_INPUT = {
    'rules unknown logical axis': ({'mesh.rules': (('embedding', ('fsdp',)),)},
                                   ['mesh.rules[0]', "'embedding'", 'embed, heads, kv_heads']),
    'domain routing without mixture': (
        {'model.moe.num_experts': 4, 'model.moe.routing': 'domain', 'model.moe.num_domains': 2},
        ["model.moe.routing='domain'", 'data.mixture is empty', "routing='learned'"]),
    'domain+learned routing without mixture': (
        {'model.moe.num_experts': 4, 'model.moe.routing': 'domain+learned',
         'model.moe.num_domains': 2}, ["model.moe.routing='domain+learned'", 'data.mixture']),
    'negative row stride': ({'data.train_row_stride': -1},
                            ['data.train_row_stride=-1', 'data.seq_len + 1 = 129']),
    'row stride over a row': ({'data.train_row_stride': 130}, ['data.train_row_stride=130']),
    'cudnn with float32': ({'model.attention': 'cudnn'},
                           ["model.attention='cudnn'", "model.dtype='float32'", 'bfloat16']),
    'cudnn head dim not a multiple of 8': (
        {'model.attention': 'cudnn', 'model.dtype': 'bfloat16', 'model.width': 192,
         'model.num_heads': 16, 'model.num_kv_heads': 4}, ['192/16 = 12', 'multiple of 8']),
    'cudnn head dim too large': (
        {'model.attention': 'cudnn', 'model.dtype': 'bfloat16', 'model.width': 1024,
         'model.num_heads': 2, 'model.num_kv_heads': 2, 'model.mlp_dim': 1024},
        ['1024/2 = 512', '<= 256']),
    'runtime cpu_devices': ({'runtime.cpu_devices': -2}, ['runtime.cpu_devices=-2']),
    'weight decay kind': ({'optimizer.weight_decay_exclude': ('norm', 'embedding')},
                          ["['embedding']", "'norm', 'bias', 'embed'"]),
}


@pytest.mark.parametrize('name', list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_names_its_key_and_fix(name):
  updates, expected = BAD_INPUT[name]
  with pytest.raises(ConfigError) as e:
    config_lib.validate(_config(updates), num_devices=8)
  assert len(e.value.problems) == 1, e.value.problems
  for text in expected:
    assert text in str(e.value), f'{text!r} not in: {e.value}'


def test_edges_of_the_new_checks_are_accepted(tmp_path):
  (tmp_path / 'a.txt').write_text('hello')
  for updates in [
      {'data.train_row_stride': 129}, {'data.train_row_stride': 1},  # a row; overlapping
      {'model.attention': 'cudnn', 'model.dtype': 'bfloat16'},  # head dim 192/6 = 32
      {'mesh.rules': [(name, ()) for name in config_lib.LOGICAL_AXES if name != 'batch']},
      {'model.moe.num_experts': 4, 'model.moe.routing': 'domain', 'model.moe.num_domains': 2,
       'data.mixture': (('a', 'stdlib:code', 1.0), ('b', str(tmp_path / 'a.txt'), 1.0))},
  ]:
    config_lib.validate(_config(updates), num_devices=8)


def test_typed_view_mirrors_the_config_dict():
  config = _config({'mesh.rules': [['vocab', []]], 'optimizer.lr': 1})
  c = config_lib.typed(config)
  assert c.model.moe.routing == 'learned' and c.data.tokenizer.kind == 'sentencepiece'
  assert c.mesh.rules == (('vocab', ()),) and c.optimizer.lr == 1.0
  assert isinstance(c.optimizer.lr, float)
  with pytest.raises(AttributeError):
    c.model.width = 8  # frozen
  # Every key of configs/default.py is a field and every field a key, with the same nesting.
  fields = {key for key, _, _ in config_lib.fields.walk(config_lib.Config)}
  assert fields == {k for k, _ in config_lib.keys.leaves(default.get_config())}
  with pytest.raises(ConfigError, match='model.width=.256. has type str'):
    config_lib.typed(_config({'model.width': '256'}))


def test_files_false_skips_the_checks_of_this_machines_files():
  config = _config({'data.source': 'text', 'data.path': '/nowhere/*.txt', 'init_from': '/nope'})
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, num_devices=8)
  assert len(e.value.problems) == 2
  config_lib.validate(config, num_devices=8, files=False)
  assert config_lib.resolve(config, num_devices=2, files=False).mesh.data == 2


def test_mesh_sizes_are_one_arithmetic():
  mesh = _config({'mesh.data': 2, 'mesh.fsdp': -1}).mesh
  assert axes.mesh_sizes(mesh, 8) == ({'data': 2, 'fsdp': 4, 'sequence': 1, 'expert': 1,
                                       'tensor': 1},
                                      {a: 1 for a in axes.MESH_AXES})
  with pytest.raises(ConfigError, match='mesh.fsdp=-1 cannot take the remaining devices'):
    axes.mesh_sizes(_config({'mesh.data': 3, 'mesh.fsdp': -1}).mesh, 8)
  with pytest.raises(ConfigError, match='give mesh.dcn_data explicitly'):
    axes.mesh_sizes(_config({'mesh.dcn_data': -1}).mesh, 8)
  assert axes.mesh_shape(_config({'mesh.dcn_data': -1}).mesh, 8, 2)['data'] == 8


def test_lm_config_imports_no_jax():
  code = ('import sys, lm.config; bad = [m for m in sys.modules if m == "jax" or '
          'm.startswith(("lm.parallel.mesh", "lm.data", "lm.model"))]; print(bad)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


# ---- config files -----------------------------------------------------------------------

GOOD_FILE = 'from configs import default\n\n\ndef get_config():\n  c = default.get_config()\n' \
            '  c.train.steps = 7\n  return c\n'
BAD_FILES = {
    'syntax error': ('def get_config():\n  c = dict(\n  return c\n', ['bad.py, line 2',
                                                                      'syntax error']),
    'no get_config': ('x = 1\n', ['bad.py has no get_config()']),
    'error in get_config': ('def get_config():\n  return undefined_name\n',
                            ['bad.py, line 2', "NameError: name 'undefined_name'"]),
    'not a ConfigDict': ('def get_config():\n  return {"a": 1}\n', ['returned dict']),
    'missing': (None, ['bad.py does not exist']),
}


@pytest.mark.parametrize('name', list(BAD_FILES), ids=list(BAD_FILES))
def test_a_config_file_that_does_not_load_is_one_line_naming_it(name, tmp_path):
  text, expected = BAD_FILES[name]
  path = tmp_path / 'bad.py'
  if text is not None:
    path.write_text(text)
  with pytest.raises(ConfigError) as e:
    config_lib.load_file(path)
  message = str(e.value)
  assert '\n' not in message
  for part in expected:
    assert part in message, message
  # The same through the --config flag: absl's flag error (one line, exit status 1).
  argv = ['prog', f'--config={path}', '--config.train.steps=3']
  fv = flags.FlagValues()
  config_lib.define_config_flag('config', flag_values=fv, sys_argv=argv)
  with pytest.raises(flags.IllegalFlagValueError) as e:
    fv(argv)
  assert '\n' not in str(e.value) and expected[0] in str(e.value), str(e.value)


def test_config_flag_loads_a_file_with_overrides(tmp_path):
  path = tmp_path / 'good.py'
  path.write_text(GOOD_FILE)
  assert config_lib.load_file(path).train.steps == 7
  argv = ['prog', f'--config={path}', '--config.model.width=64', '--config.optimizer.lr=1']
  fv = flags.FlagValues()
  holder = config_lib.define_config_flag('config', flag_values=fv, sys_argv=argv)
  fv(argv)  # (ml_collections reads the overrides from sys_argv, default sys.argv)
  config = config_lib.from_flag(holder)
  assert (config.train.steps, config.model.width, config.optimizer.lr) == (7, 64, 1.0)
  with pytest.raises(AttributeError):
    config.new_key = 1  # locked, as ml_collections' own flag leaves it
  # A file that ml_collections' own flag defers (missing): from_flag names it.
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', flag_values=fv)
  fv(['prog', f'--config={tmp_path / "missing.py"}'])
  with pytest.raises(ConfigError, match='missing.py'):
    config_lib.from_flag(holder)


def test_choices_agree_with_the_code_that_reads_them():
  assert tuple(lora.TARGETS) == config_lib.LORA_TARGETS
  assert optimizer.WEIGHT_DECAY_KINDS == config_lib.WEIGHT_DECAY_KINDS
