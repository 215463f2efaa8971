"""What int8 costs and saves: `python -m lm.quantize --workdir=DIR [--eval_batches=N]`.

Evaluates a trained run's checkpoint on its validation batches twice, with float weights
and with int8 weight-only quantization (lm.infer.quantize), and prints validation loss,
perplexity, bits per byte and the bytes of weights of each.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

if __name__ == '__main__':  # flags exist only for the command line
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate; required.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
  _EVAL_BATCHES = flags.DEFINE_integer(
      'eval_batches', 0, 'Validation batches (of train.batch_size rows); 0 = the run\'s '
      'train.eval_batches.')
  _JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  if not _WORKDIR.value or not os.path.isfile(os.path.join(_WORKDIR.value, 'config.json')):
    print(f'error: --workdir={_WORKDIR.value} is not a training workdir (no config.json)',
          file=sys.stderr)
    sys.exit(1)
  from lm.checkpoint import CheckpointError
  from lm.config import ConfigError
  from lm.data import DataError
  from lm.infer.quantize import compare_perplexity
  try:
    r = compare_perplexity(os.path.abspath(_WORKDIR.value), _STEP.value,
                           _EVAL_BATCHES.value or None)
  except (ValueError, ConfigError, DataError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
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


if __name__ == '__main__':
  app.run(main)
