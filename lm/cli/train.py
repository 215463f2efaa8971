"""`python -m lm.main --config=configs/X.py [--config.a.b=v] --workdir=DIR` (or `python -m lm
train ...`): train a language model.

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from lm import cli
from lm import config as config_lib

_DEFAULT_CONFIG = 'configs/default.py'
_CONFIG_FLAG = re.compile(r'^--?config(=|$)')
if not any(_CONFIG_FLAG.match(a) for a in sys.argv[1:]):
  # (a command module is imported only to run it.) Name the default config explicitly so
  # that it loads (and --config.* overrides apply) inside app.run's flag parsing, where
  # _parse_flags reports a bad override in one line, not at import with a traceback.
  sys.argv.insert(1, f'--config={_DEFAULT_CONFIG}')

_CONFIG = config_lib.define_config_flag(
    'config', _DEFAULT_CONFIG,
    'Experiment config file (a Python file with get_config()); override any field with '
    '--config.<field>=<value>, e.g. --config.train.steps=100.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics.jsonl, TensorBoard events, config.json and the '
    'sample; default: workdirs/<config file name>. An existing run there is resumed.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-process runs: HOST:PORT where process 0 listens and every process connects, e.g. '
    '127.0.0.1:12355. Give it with --num_processes and --process_id; without these flags a '
    'SLURM job step or a multi-host TPU VM is detected from the environment, else the run '
    'is one process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process runs: how many processes take part (with '
    '--coordinator_address and --process_id).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process runs: this process\'s index, 0 .. --num_processes - 1.')


def default_workdir(config_path: str) -> str:
  return os.path.join('workdirs', os.path.splitext(os.path.basename(config_path))[0])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a --config.<key> override naming a key the config lacks ends
  the run with one line naming it instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override names no config field
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]  # the KeyError inside the AttributeError
    name, _, hint = str(e.args[0] if e.args else e).partition('\n')
    name = name.strip('\'"')
    given = [a.split('=', 1)[0] for a in argv[1:]
             if a.lstrip('-').startswith('config.') and name in a.split('=', 1)[0]]
    print(f"error: unknown config key '{name}' in {', '.join(given) or 'a --config.* override'}"
          f"{'; ' + hint if hint else ''} (configs/default.py lists every key)", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  config = cli.config_from_flag(_CONFIG)  # applies runtime.cpu_devices before jax starts
  # (imported here: jax, flax, grain and orbax take seconds, which --help, a bad flag or a
  # bad config need not wait for; they still count as the run's start-up)
  from lm.parallel import distributed
  from lm.train import train
  from lm.train.timing import process_start_time
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = _WORKDIR.value or default_workdir(config_path)
  try:
    train(config, workdir, started_at=process_start_time())  # imports count as start-up
  except KeyboardInterrupt:
    print('interrupted; the run resumes from its checkpoint when started again', file=sys.stderr)
    sys.exit(130)


def run() -> None:
  cli.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
