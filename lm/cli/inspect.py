"""`python -m lm inspect --workdir=DIR --text=TEXT`: look inside a trained run.

    python -m lm.inspect --workdir=DIR --text='to be or not' [--out_dir=DIR/inspect]
        [--top_k=5] [--layers=all|0,2] [--step=N]

Writes one PNG of attention heatmaps per layer (a grid of heads) and report.json, and prints
a table: position, token, loss of the next token, top-k next-token predictions
(lm/tools/inspect.py).
"""

from __future__ import annotations

from absl import flags, logging

from lm import cli
from lm import workdir as workdir_lib
from lm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to load (its latest '
                               'checkpoint, or --step).')
_TEXT = flags.DEFINE_string('text', None, 'Text to run through the model; cut to the '
                            "model's max_len tokens.")
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the PNGs and report.json go; default: '
                               '<workdir>/inspect.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'How many next-token predictions to list per '
                              'position.')
_LAYERS = flags.DEFINE_string('layers', 'all', 'Layers to draw: "all" or comma-separated '
                              'indices such as "0,1".')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the latest.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value or _TEXT.value is None:
    raise UserError('give --workdir=DIR and --text=...')
  workdir_lib.check_trained(_WORKDIR.value)  # (load_run's first check, before jax loads)
  from lm.tools import inspect  # jax, flax, matplotlib
  rows, pngs, out_dir, note = inspect.inspect_run(_WORKDIR.value, _TEXT.value, _OUT_DIR.value,
                                                  _TOP_K.value, _LAYERS.value, _STEP.value)
  if note:
    print(note)
  print(inspect.format_table(rows))
  for p in pngs:
    print(f'wrote {p}')
  print(f'wrote {out_dir / inspect.REPORT_FILE}')


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
