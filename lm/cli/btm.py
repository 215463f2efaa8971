"""`python -m lm btm branch|merge|eval`: branch-train-merge over a `data.mixture` run's domains.

  python -m lm.btm branch --parent=RUN --out=DIR --steps=N [--domains=code,prose]
      forks RUN's latest checkpoint into DIR/<domain>, one run per domain that starts from
      RUN's parameters (init_from) and trains N steps on that domain only (the other
      domains get weight 0: still evaluated, never trained on).
  python -m lm.btm merge --branches=DIR/code,DIR/prose --out=DIR/merged [--weights=1,1]
      averages the branches' parameters into a new run that lm.generate, lm.api.load and
      lm.main (to train on) read like any run.
  python -m lm.btm eval --branches=... [--mode=ensemble|average]
      per-domain validation loss of the ensemble (the mean of the branches' next-token
      probabilities) or of the parameter average; prints one JSON object.

(lm/tools/btm.py)
"""

from __future__ import annotations

import json

from absl import flags, logging

from lm import cli
from lm.errors import UserError
from lm.tools import btm

COMMANDS = ('branch', 'merge', 'eval')

_PARENT = flags.DEFINE_string('parent', None, 'branch: the trained run (workdir) to fork.')
_OUT = flags.DEFINE_string(
    'out', None, 'branch: directory for the branch workdirs (one per domain); merge: the '
    'merged workdir to write.')
_STEPS = flags.DEFINE_integer('steps', None, 'branch: training steps of each branch; '
                              "default: the parent's train.steps.")
_DOMAINS = flags.DEFINE_list(
    'domains', [], "branch: domains to branch (names from the parent's data.mixture); "
    'default: all of them.')
_BRANCHES = flags.DEFINE_list('branches', [], 'merge/eval: branch workdirs, comma-separated.')
_WEIGHTS = flags.DEFINE_list('weights', [], 'merge/eval average: a weight per branch '
                             '(normalised); default: equal weights.')
_MODE = flags.DEFINE_enum('mode', 'ensemble', ['ensemble', 'average'],
                          "eval: mean of the branches' probabilities, or their parameter "
                          'average.')
_EVAL_BATCHES = flags.DEFINE_integer('eval_batches', None, 'eval: validation batches; default: '
                                     "the first branch's train.eval_batches.")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise UserError('usage: python -m lm.btm branch|merge|eval --flags '
                    '(python -m lm.btm --help lists them)')
  command = argv[1]
  try:
    weights = [float(x) for x in _WEIGHTS.value]
  except ValueError as e:
    raise UserError(f'--weights {_WEIGHTS.value} must be numbers') from e
  if command == 'branch':
    if not _PARENT.value or not _OUT.value:
      raise UserError('branch needs --parent=RUN_WORKDIR and --out=DIR')
    btm.branch(_PARENT.value, _OUT.value, _STEPS.value, _DOMAINS.value)
  elif command == 'merge':
    if not _OUT.value:
      raise UserError('merge needs --out=MERGED_WORKDIR')
    btm.merge(_BRANCHES.value, _OUT.value, weights)
  else:
    print(json.dumps(btm.evaluate(_BRANCHES.value, _MODE.value, weights, _EVAL_BATCHES.value),
                     indent=1))


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # Orbax logs every save/restore at INFO


if __name__ == '__main__':
  run()
