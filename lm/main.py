"""Train a language model: `python -m lm.main --config=configs/X.py [--config.a.b=v] --workdir=DIR`.

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/default.py',
    'Experiment config file (a Python file with get_config()); override any field with '
    '--config.<field>=<value>, e.g. --config.train.steps=100.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Directory for checkpoints, metrics.jsonl, TensorBoard events, config.json and the '
    'sample; default: workdirs/<config file name>. An existing run there is resumed.')


def default_workdir(config_path: str) -> str:
  return os.path.join('workdirs', os.path.splitext(os.path.basename(config_path))[0])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from lm import config as config_lib  # deferred: --help should not import jax
  from lm.checkpoint import CheckpointError
  from lm.data import DataError
  from lm.train import TrainingDiverged, train

  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(flags.FLAGS['config']))
  try:
    train(_CONFIG.value, workdir)
  except (config_lib.ConfigError, DataError, CheckpointError, TrainingDiverged) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('interrupted; the run resumes from its checkpoint when started again', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main)
