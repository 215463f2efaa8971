"""The run directory: the one module that knows its layout and reads and writes its files.

A workdir is a local path or a URL (`gs://bucket/run`, or any scheme etils.epath handles,
the library Orbax itself uses), and everything here goes through `epath.Path`, so a pod's
workers all write the one shared tree. Layout:

  config.json        the resolved config (vocabulary size filled in, -1 mesh sizes resolved)
  tokenizer/         the run's tokenizer, saved when training starts (checked on resume):
                     a copied workdir generates, serves and evaluates with no data at hand
  checkpoints/<step>/ Orbax: state/, data_state/, config/config.json, metrics/
  metrics.jsonl, tb/, sample.txt, sharding.txt, eval/<task>.json
  config.py          runs written by `lm.convert from-hf`: the config as a --config file

Writing a checkpoint needs the model and optimizer, so `lm.run.write_run` (above the model)
writes whole runs; this module stays below everything but config, data tokenizers and errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from etils import epath

from lm import config as config_lib
from lm.config import ConfigDict
from lm.data import tokenizers
from lm.data.tokenizers import Tokenizer
from lm.errors import DataError, WorkdirError

CONFIG_FILE = 'config.json'
CONFIG_PY = 'config.py'
TOKENIZER_DIR = 'tokenizer'
CHECKPOINT_DIR = 'checkpoints'
METRICS_FILE = 'metrics.jsonl'
TB_DIR = 'tb'
SAMPLE_FILE = 'sample.txt'
SHARDING_FILE = 'sharding.txt'
EVAL_DIR = 'eval'

PathLike = str | os.PathLike


def is_url(workdir: PathLike) -> bool:
  """True for `scheme://...` workdirs (gs://, s3://, ...), which are never made absolute."""
  return '://' in os.fspath(workdir)


def path(workdir: PathLike) -> epath.Path:
  """The workdir as an epath.Path: a URL as it is, a local path made absolute (~ expanded)."""
  s = os.fspath(workdir)
  return epath.Path(s if is_url(s) else os.path.abspath(os.path.expanduser(s)))


def name(workdir: PathLike) -> str:
  """The workdir as a string for messages and for other libraries (Orbax, TensorBoard)."""
  return os.fspath(path(workdir))


def config_path(workdir: PathLike) -> epath.Path:
  return path(workdir) / CONFIG_FILE


def tokenizer_dir(workdir: PathLike) -> epath.Path:
  return path(workdir) / TOKENIZER_DIR


def checkpoint_dir(workdir: PathLike) -> epath.Path:
  return path(workdir) / CHECKPOINT_DIR


def metrics_path(workdir: PathLike) -> epath.Path:
  return path(workdir) / METRICS_FILE


def tb_dir(workdir: PathLike) -> epath.Path:
  return path(workdir) / TB_DIR


def sample_path(workdir: PathLike) -> epath.Path:
  return path(workdir) / SAMPLE_FILE


def sharding_path(workdir: PathLike) -> epath.Path:
  return path(workdir) / SHARDING_FILE


def eval_dir(workdir: PathLike) -> epath.Path:
  return path(workdir) / EVAL_DIR


# ---- the config -----------------------------------------------------------------------------


def has_config(workdir: PathLike) -> bool:
  return config_path(workdir).exists()


def read_config(workdir: PathLike, *, log=None) -> ConfigDict:
  """The run's saved config, upgraded: keys newer than the run take their defaults (which
  keep the older behaviour); `log`, if given, hears which keys were filled."""
  p = config_path(workdir)
  if not p.exists():
    raise WorkdirError(f'{p} not found: is {name(workdir)} a training workdir '
                       '(python -m lm.main --workdir=...)?')
  config = config_lib.from_json(p.read_text(), source=str(p))
  added = config_lib.fill_new_keys(config)
  if added and log is not None:
    log(f'[workdir] {p} predates config keys {", ".join(added)}; they take their defaults')
  return config


def write_config(workdir: PathLike, config: ConfigDict) -> None:
  """Writes config.json (to a temporary name first, so a crash never leaves half a file)."""
  write_text(config_path(workdir), config_lib.to_json(config))


def write_text(target: PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `target` whole or not at all: to a temporary name beside it,
  then renamed over it, so a crash leaves the old file, never half a new one."""
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_url(target):
    target.write_text(text)  # object stores write whole objects
    return
  tmp = target.parent / f'.{target.name}.tmp'
  tmp.write_text(text, encoding='utf-8')
  os.replace(tmp, target)


# ---- the tokenizer ----------------------------------------------------------------------------


def has_tokenizer(workdir: PathLike) -> bool:
  return (tokenizer_dir(workdir) / tokenizers.META_FILE).exists()


@contextmanager
def _local_copy(source: epath.Path) -> Iterator[str]:
  """`source` (a directory, maybe remote) as a local directory: tokenizer libraries
  (SentencePiece) read local files only."""
  if not is_url(source):
    yield os.fspath(source)
    return
  with tempfile.TemporaryDirectory(prefix='lm-tokenizer-') as tmp:
    for f in source.iterdir():
      (epath.Path(tmp) / f.name).write_bytes(f.read_bytes())
    yield tmp


def save_tokenizer(workdir: PathLike, tokenizer: Tokenizer) -> None:
  """Saves the run's tokenizer into `workdir/tokenizer/` (replacing one that is there)."""
  target = tokenizer_dir(workdir)
  with tempfile.TemporaryDirectory(prefix='lm-tokenizer-') as tmp:
    tokenizer.save(epath.Path(tmp))
    staging = target.parent / f'.{TOKENIZER_DIR}.tmp'
    if staging.exists():
      staging.rmtree()
    staging.mkdir(parents=True)
    for f in sorted(epath.Path(tmp).iterdir()):
      (staging / f.name).write_bytes(f.read_bytes())
    if target.exists():
      target.rmtree()
    staging.rename(target)


def load_tokenizer(workdir: PathLike) -> Tokenizer:
  """The tokenizer saved in the workdir; a run trained before lm saved it gets a message
  saying how to add it."""
  source = tokenizer_dir(workdir)
  if not has_tokenizer(workdir):
    raise WorkdirError(
        f'{name(workdir)} holds no tokenizer ({source}/{tokenizers.META_FILE} is missing); '
        'runs trained before lm saved tokenizers into the workdir need one: run '
        f'`python -m lm.main --workdir={name(workdir)} --config=...` once more (it saves it '
        'on resume), or copy a tokenizer directory there.')
  with _local_copy(source) as local:
    try:
      return tokenizers.load(local)
    except DataError as e:
      raise WorkdirError(f'{source}: the saved tokenizer does not load ({e}); copy the '
                         "tokenizer/ directory of the run's original workdir here.") from e


def check_same_tokenizer(saved: Tokenizer, ours: Tokenizer, probe: str, where: str) -> None:
  """The ids of a saved tokenizer must mean the same text as `ours` (same vocabulary and
  the same encoding of `probe`); `where` names the saved one in the message."""
  if saved.vocab_size != ours.vocab_size or saved.encode(probe) != ours.encode(probe):
    raise DataError(
        f'{where} holds another tokenizer ({saved.kind}, vocabulary {saved.vocab_size}) than '
        f'the one data.* prepares now ({ours.kind}, vocabulary {ours.vocab_size}): the data or '
        'data.tokenizer changed since that run was trained. Use its data settings, or another '
        '--workdir.')


# ---- checkpoints -----------------------------------------------------------------------------


def checkpoint_steps(workdir: PathLike) -> list[int]:
  """Steps of the finished checkpoints in the workdir, ascending (no Orbax needed)."""
  d = checkpoint_dir(workdir)
  if not d.exists():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def check_trained(workdir: PathLike) -> None:
  """Fails fast on a workdir that cannot hold a trained model: no config.json, no tokenizer
  or no checkpoint; the message says what to do."""
  if not path(workdir).exists():
    raise WorkdirError(f'workdir {name(workdir)} does not exist')
  if not has_config(workdir):
    raise WorkdirError(f'workdir {name(workdir)} has no {CONFIG_FILE}; is it a training '
                       'workdir (python -m lm.main --workdir=...)?')
  if not checkpoint_steps(workdir):
    raise WorkdirError(f'workdir {name(workdir)} has no checkpoints (nothing in '
                       f'{checkpoint_dir(workdir)}); train it first, or wait for its first '
                       'checkpoint.')


def check_new(workdir: PathLike, flag: str = '--out') -> None:
  """A workdir a tool is about to create must not already hold a run (nothing is
  overwritten)."""
  p = path(workdir)
  if p.exists() and any(p.iterdir()):
    raise WorkdirError(f'{flag}={name(workdir)} already exists and is not empty; pick a new '
                       'directory (nothing was written).')


def remove_tree(target: PathLike) -> None:
  """Deletes a directory a tool wrote (local or remote)."""
  p = epath.Path(target)
  if not p.exists():
    return
  if is_url(p):
    p.rmtree()
  else:
    shutil.rmtree(p)
