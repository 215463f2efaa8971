"""Config files and flags in, JSON out and back, and the upgrade of configs older runs saved.

A config file is a Python file whose `get_config()` returns a ConfigDict (configs/). One
that does not load (missing, a syntax error, an exception in get_config) is a ConfigError
naming the file and, where there is one, the line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
import traceback
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from lm.errors import ConfigError, UserError

ConfigDict = ml_collections.ConfigDict

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]  # holds configs/ in a checkout


def default_config() -> ConfigDict:
  """The base config every experiment derives from (`configs/default.py`)."""
  try:
    from configs import default  # the repository's configs package, installed with lm
  except ModuleNotFoundError:  # lm imported from a checkout that is not on sys.path
    return load_file(REPO_ROOT / 'configs' / 'default.py')
  return default.get_config()


def load_file(path: str | os.PathLike, *args: str) -> ConfigDict:
  """The ConfigDict that `get_config(*args)` of the Python config file at `path` returns.

  A file that does not load is a ConfigError naming it: missing, a syntax error (with its
  line), no get_config(), or an exception while it runs (with the file's line it came from).
  """
  shown = str(path)
  path = pathlib.Path(os.path.expanduser(path))
  if not path.is_file():
    raise ConfigError(f'config file {shown} does not exist; give a Python file with '
                      'get_config(), e.g. configs/default.py')
  spec = importlib.util.spec_from_file_location(f'_lm_config_{path.stem}', path)
  if spec is None or spec.loader is None:
    raise ConfigError(f'{shown}: cannot load it as a Python config file (give a .py file).')
  if str(REPO_ROOT) not in sys.path and (REPO_ROOT / 'configs').is_dir():
    sys.path.append(str(REPO_ROOT))  # config files import `from configs import default`
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'{shown} has no get_config(); a config file defines get_config() '
                        'returning a ConfigDict (see configs/default.py).')
    config = module.get_config(*args)
  except UserError:
    raise
  except SyntaxError as e:
    where = f'{e.filename}, line {e.lineno}' if e.filename else f'{shown}, line {e.lineno}'
    raise ConfigError(f'{where}: syntax error: {e.msg}; fix the config file '
                      f'(--config={shown}).') from e
  except Exception as e:  # any error of the user's file, named by its line
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if pathlib.Path(f.filename).resolve() == path.resolve()]
    where = f'{shown}, line {frames[-1].lineno}' if frames else shown
    raise ConfigError(f'{where}: {type(e).__name__}: {e} (while loading the config file)') from e
  if not isinstance(config, ConfigDict):
    raise ConfigError(f'{shown}: get_config() returned {type(config).__name__}, not a '
                      'ml_collections.ConfigDict; start from configs.default.get_config().')
  return config


class _FileParser(flags.ArgumentParser):
  """Parses --config=FILE[:ARG] as ml_collections' file parser does, loading with `load_file`:
  a file that does not load is a flag error (absl prints it on one line and exits 1)."""

  def __init__(self, name: str, lock_config: bool = True):
    self.name = name
    self._lock_config = lock_config

  def flag_type(self) -> str:
    return 'config object'

  def parse(self, path):
    file, _, arg = path.partition(':')
    try:
      config = load_file(file, *([arg] if arg else []))
    except ConfigError as e:
      raise ValueError(str(e).removeprefix('invalid config: ')) from e
    if self._lock_config:
      config.lock()
    return config


def define_config_flag(name: str = 'config', default: str | None = None,
                       help_string: str = 'a config file (e.g. configs/default.py); '
                       '--config.<key>=<value> overrides single fields.',
                       flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` whose file is read by `load_file`, so a syntax error
  (or any file that does not load) is one line naming the file and line."""
  holder = config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values,
                                           **kwargs)
  flag_values[name].parser = _FileParser(name, lock_config=kwargs.get('lock_config', True))
  # A key flag of the command that called us, so its --help lists --config.
  flag_values.register_key_flag_for_module(sys._getframe(1).f_globals['__name__'],
                                           flag_values[name])
  return holder


def from_flag(holder) -> ConfigDict:
  """The config of an `ml_collections.config_flags` --config flag; a file that does not
  load is a ConfigError naming it (ml_collections defers that error to first use)."""
  try:
    config = holder.value
    config.keys()  # a config that failed to load raises here, on first use
    return config
  except OSError as e:
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
      cause = cause.__cause__ or cause.__context__
    reason = ' '.join(str(cause).split())
    raise ConfigError(f'--config: cannot load the config file ({reason}); give a '
                      'Python file with get_config(), e.g. --config=configs/default.py') from e


def fill_new_keys(config: ConfigDict) -> list[str]:
  """Adds, in place, the keys configs/default.py has and a saved `config` lacks (a run
  written by an older lm), each with its default, which keeps the older behaviour; returns
  the dotted keys it added."""
  added: list[str] = []

  def walk(saved: ConfigDict, default: ConfigDict, prefix: str) -> None:
    for key in default.keys():
      value = default[key]
      if key not in saved:
        saved[key] = ConfigDict(value.to_dict()) if isinstance(value, ConfigDict) else value
        added.append(prefix + key)
      elif isinstance(value, ConfigDict) and isinstance(saved[key], ConfigDict):
        walk(saved[key], value, f'{prefix}{key}.')

  walk(config, default_config(), '')
  return added


def to_json(config: ConfigDict) -> str:
  """The config as indented JSON (tuples become lists; `from_json` turns them back)."""
  return json.dumps(config.to_dict(), indent=2)


def from_json(s: str, source: str = 'config JSON') -> ConfigDict:
  """Inverse of `to_json`: JSON lists come back as tuples, as configs/default.py writes them;
  `source` (a file name) is named in errors."""
  try:
    d = json.loads(s)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{source} does not parse ({e}); was it written by '
                      'lm.config.to_json?') from e
  if not isinstance(d, dict):
    raise ConfigError(f'{source} must hold an object, got {type(d).__name__}')
  return ConfigDict(lists_to_tuples(d))


def lists_to_tuples(x: Any) -> Any:
  """Lists (JSON arrays, or lists written in a config file) as tuples, recursively."""
  if isinstance(x, dict):
    return {k: lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(lists_to_tuples(v) for v in x)
  return x
