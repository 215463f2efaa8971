"""`python -m lm plot WORKDIR [WORKDIR ...] [--out=PNG] [--x=step|tokens] [--log_y]`: loss
curves of several runs on one figure (lm/tools/plot.py).

Train loss is drawn solid and eval loss dashed with markers, one colour per run, against
the step or the tokens seen (step * train.batch_size * data.seq_len of each run).
"""

from __future__ import annotations

from absl import flags

from lm import cli
from lm.errors import UserError
from lm.tools import plot

_OUT = flags.DEFINE_string('out', None, 'PNG file to write; default: <first workdir>/loss.png.')
_X = flags.DEFINE_enum('x', 'step', list(plot.X_AXES),
                       'x axis: optimizer step, or tokens seen (step * train.batch_size * '
                       "data.seq_len from each workdir's config.json).")
_LOG_Y = flags.DEFINE_bool('log_y', False, 'Draw the loss on a logarithmic axis.')


def main(argv: list[str]) -> None:
  workdirs = argv[1:]
  if not workdirs:
    raise UserError('give one or more workdirs: python -m lm.plot WORKDIR [WORKDIR ...]')
  print(f'wrote {plot.plot_runs(workdirs, _OUT.value, x=_X.value, log_y=_LOG_Y.value)}')


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
