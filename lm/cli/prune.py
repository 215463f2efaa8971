"""`python -m lm prune --workdir=RUN --out=SMALL [--width=..] [--mlp_dim=..] ...`: structured
pruning of a trained dense run into a smaller dense run.

Importance is estimated from activations on a calibration sample of the run's own training
data (Minitron): MLP neurons by their activations, attention heads by their outputs (KV
groups by the sum of their query heads), embedding channels by the norms' outputs, layers by
block importance (1 - cosine of a block's input and output). The least important parts are
removed to the targets; each target is a size ('96') or the fraction kept ('0.5'); a flag
left out keeps its dimension. SMALL loads, trains (from step 0 with a fresh optimizer, or as
init_from), evaluates, serves, exports and converts like any run; SMALL/prune.json records
what was kept (lm/tools/prune.py, docs/compression.md).
"""

from __future__ import annotations

from absl import flags, logging

from lm import cli
from lm.errors import UserError
from lm.tools.prune import Targets, prune_workdir

_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained dense run to prune.')
_OUT = flags.DEFINE_string('out', None, 'New workdir for the pruned run; must not exist yet.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to prune; default: the latest.')
_LAYERS = flags.DEFINE_string('num_layers', None, 'Layers to keep (size or fraction); the '
                              'lowest block importance goes first.')
_KV = flags.DEFINE_string('num_kv_heads', None, 'KV groups to keep (size or fraction); a '
                          'removed group takes its query heads with it.')
_HEADS = flags.DEFINE_string('num_heads', None, 'Query heads to keep in all (size or '
                             'fraction): a multiple of the KV groups kept, the same number in '
                             'each group; default: all heads of the groups kept.')
_MLP = flags.DEFINE_string('mlp_dim', None, 'MLP neurons to keep per layer (size or '
                           'fraction).')
_WIDTH = flags.DEFINE_string('width', None, 'Embedding (residual-stream) channels to keep '
                             '(size or fraction); the head size stays as it is.')
_ROWS = flags.DEFINE_integer('calibration_rows', 256, 'Training rows of the run\'s data '
                             'the importance is estimated on.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Rows per calibration forward pass.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value or not _OUT.value:
    raise UserError('--workdir (the run to prune) and --out (a new directory) are required')
  targets = Targets.parse(num_layers=_LAYERS.value, num_kv_heads=_KV.value,
                          num_heads=_HEADS.value, mlp_dim=_MLP.value, width=_WIDTH.value)
  prune_workdir(_WORKDIR.value, _OUT.value, targets, step=_STEP.value,
                calibration_rows=_ROWS.value, batch_size=_BATCH.value)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
