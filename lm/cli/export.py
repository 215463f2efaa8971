"""`python -m lm export --workdir=DIR --out=ART`: a run for serving without lm.

Writes prefill and one-token decode functions serialized with `jax.export`, the weights
(float or --quantize=int8) beside them in weights.npz, the tokenizer, the run's config and
a runner, `python ART/run.py --prompt=TEXT`, that needs only jax, numpy and sentencepiece.
The artifact layout is in lm/infer/export.py and docs/deployment.md.
"""

from __future__ import annotations

import os

from absl import flags, logging

from lm import cli
from lm.errors import UserError
from lm.workdir import check_new, check_trained

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Training workdir (config.json and checkpoints/) to export; required.')
_OUT = flags.DEFINE_string('out', None, 'Artifact directory to create (new or empty); required.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export; default: the latest.')
_QUANTIZE = flags.DEFINE_enum(
    'quantize', 'none', ['none', 'int8'], 'Weight quantization: int8 stores matmul weights as '
    'int8 with a float scale per output channel (about 4x smaller).')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 0, 'Rows per call the functions are exported for; 0 = any batch size '
    '(a symbolic dimension).')
_MAX_LEN = flags.DEFINE_integer(
    'max_len', 0, 'KV cache length: the longest prompt + continuation the artifact serves; '
    "0 = the model's max_len.")
_PLATFORMS = flags.DEFINE_list(
    'platforms', [], 'Platforms to lower for, e.g. cpu,cuda; default: this machine\'s backend.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value or not _OUT.value:
    raise UserError('--workdir and --out are both required')
  check_trained(_WORKDIR.value)
  out = os.path.abspath(_OUT.value)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out={out} exists and is not a directory; give a new one')
  check_new(out, '--out')
  from lm.infer.export import export_run  # jax, flax, orbax: once the flags are checked
  from lm.model.quantize import weight_bytes
  from lm.run import load_run
  run = load_run(_WORKDIR.value, _STEP.value)
  manifest = export_run(run, out, quantize_mode=_QUANTIZE.value, cache_len=_MAX_LEN.value,
                        batch_size=_BATCH_SIZE.value, platforms=tuple(_PLATFORMS.value))
  full = weight_bytes(run.params)
  print(f'exported step {run.step} of {run.workdir} to {out}')
  print(f"platforms {','.join(manifest['platforms'])}; batch "
        f"{manifest['batch_size'] or 'any'}; cache length {manifest['cache_len']}")
  print(f"weights: {manifest['weight_bytes']:,} bytes ({manifest['quantize']}; float: "
        f"{full:,} bytes, {full / manifest['weight_bytes']:.2f}x)")
  print(f'run it: python {os.path.join(out, "run.py")} --prompt=TEXT --max_new_tokens=50')


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)


if __name__ == '__main__':
  run()
