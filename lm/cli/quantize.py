"""`python -m lm quantize --workdir=DIR [--eval_batches=N]`: what int8 costs and saves.

Evaluates a trained run's checkpoint on its validation batches twice, with float weights
and with int8 weight-only quantization (lm.eval.quantize), and prints validation loss,
perplexity, bits per byte and the bytes of weights of each.
"""

from __future__ import annotations

import json

from absl import flags, logging

from lm import cli
from lm.errors import UserError
from lm.workdir import check_trained

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate; required.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
_EVAL_BATCHES = flags.DEFINE_integer(
    'eval_batches', 0, 'Validation batches (of train.batch_size rows); 0 = the run\'s '
    'train.eval_batches.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value:
    raise UserError('--workdir is required')
  if _EVAL_BATCHES.value < 0:
    raise UserError(f'--eval_batches={_EVAL_BATCHES.value} must be >= 0 (0 = the run\'s)')
  check_trained(_WORKDIR.value)
  from lm.eval.quantize import compare_perplexity  # jax, flax, orbax: once the flags are checked
  r = compare_perplexity(_WORKDIR.value, _STEP.value, _EVAL_BATCHES.value or None)
  f, q = r['float'], r['int8']
  print(f"checkpoint step {r['step']} of {_WORKDIR.value}")
  print(f"{'weights':8} {'val loss':>9} {'perplexity':>11} {'bits/byte':>10} {'bytes':>13}")
  for name, m in (('float', f), ('int8', q)):
    print(f"{name:8} {m['eval/loss']:9.4f} {m['eval/perplexity']:11.3f} "
          f"{m['eval/bits_per_byte']:10.4f} {m['weight_bytes']:13,}")
  print(f"int8: perplexity {100 * (q['eval/perplexity'] / f['eval/perplexity'] - 1):+.2f}%, "
        f"weights {f['weight_bytes'] - q['weight_bytes']:,} bytes smaller "
        f"({f['weight_bytes'] / q['weight_bytes']:.2f}x)")
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as fh:
      json.dump(r, fh, indent=2)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)


if __name__ == '__main__':
  run()
