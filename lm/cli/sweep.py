"""`python -m lm sweep --config=FILE --workdir=DIR --sweep='key=[v1,v2];key2=[...]'`: train a
grid of configs, one workdir each, and tabulate them (lm/tools/sweep.py).

    python -m lm.sweep --config=configs/default.py --workdir=workdirs/lr_width \\
        --sweep='optimizer.lr=[1e-3,3e-3];model.width=[128,256]' --config.train.steps=300

Each point trains as its own `python -m lm.main` process in DIR/<name>; finished points are
skipped, so a stopped sweep resumes. DIR/results.md, results.csv and loss.png hold the
results. --launcher=slurm submits one job per point, --launcher=commands prints the
commands, --launcher=none only collects the table.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm import config as config_lib
from lm.tools import sweep

_CONFIG = config_lib.define_config_flag(
    'config', 'configs/default.py',
    'Base experiment config file; --config.<field>=<value> overrides apply to every run '
    '(before the swept values).')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory the runs go under (one sub-directory per grid point) and '
    'where results.md, results.csv and loss.png are written.', required=True)
_SWEEP = flags.DEFINE_string(
    'sweep', None, "The grid: 'key=[v1,v2];key2=[v3,v4]' with dotted config keys and "
    'Python literal values; every combination is one run.', required=True)
_RESULTS_DIR = flags.DEFINE_string(
    'results_dir', None, 'Where results.md, results.csv and loss.png go (e.g. a folder under '
    'experiments/ to commit); default: --workdir.')
_LAUNCHER = flags.DEFINE_enum(
    'launcher', 'local', list(sweep.LAUNCHERS),
    'local: train the runs one after another here; slurm: submit one job per run with '
    'sbatch launch/slurm.sbatch (collect later with none); commands: print one lm.main '
    'command per run (for any other scheduler) and exit; none: only collect results from '
    'the workdirs.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  config = config_lib.from_flag(_CONFIG)
  config_lib.check_known_keys(config)
  sweep.sweep(config_path, config, _WORKDIR.value, _SWEEP.value,
              sweep.argv_overrides(sys.argv[1:]), _LAUNCHER.value,
              results_dir=_RESULTS_DIR.value)


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
