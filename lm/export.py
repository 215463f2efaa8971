"""Export a trained run for serving without lm: `python -m lm.export --workdir=DIR --out=ART`.

Writes prefill and one-token decode functions serialized with `jax.export`, the weights
(float or --quantize=int8) beside them in weights.npz, the tokenizer, the run's config and
a runner, `python ART/run.py --prompt=TEXT`, that needs only jax, numpy and sentencepiece.
The artifact layout is in lm/infer/export.py and docs/deployment.md.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from lm.errors import UserError
from lm.workdir import check_trained as check_workdir

if __name__ == '__main__':  # flags exist only for the command line
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
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  try:
    if not _WORKDIR.value or not _OUT.value:
      raise UserError('--workdir and --out are both required')
    workdir = os.path.abspath(_WORKDIR.value)
    check_workdir(workdir)
    out = os.path.abspath(_OUT.value)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
      raise UserError(f'--out={out} exists and is not an empty directory; give a new one')
    from lm import api
    from lm.checkpoint import CheckpointError
    from lm.config import ConfigError
    from lm.data import DataError
    from lm.infer.export import export_artifact
    from lm.model.quantize import quantize, weight_bytes
    try:
      run = api.load(workdir, _STEP.value, log=lambda _: None)
      float_params, tokenizer, step = run.params, run.tokenizer, run.step
      model_def, params = quantize(run.model_def, float_params, _QUANTIZE.value)
      with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
        config_json = f.read()
      manifest = export_artifact(
          model_def, params, tokenizer, out, cache_len=_MAX_LEN.value or model_def.cfg.max_len,
          batch_size=_BATCH_SIZE.value, platforms=tuple(_PLATFORMS.value),
          config_json=config_json, info={'workdir': workdir, 'step': step})
    except (ValueError, ConfigError, DataError, CheckpointError) as e:
      raise UserError(str(e)) from e
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  full = weight_bytes(float_params)
  print(f'exported step {step} of {workdir} to {out}')
  print(f"platforms {','.join(manifest['platforms'])}; batch "
        f"{manifest['batch_size'] or 'any'}; cache length {manifest['cache_len']}")
  print(f"weights: {manifest['weight_bytes']:,} bytes ({manifest['quantize']}; float: "
        f"{full:,} bytes, {full / manifest['weight_bytes']:.2f}x)")
  print(f'run it: python {os.path.join(out, "run.py")} --prompt=TEXT --max_new_tokens=50')


if __name__ == '__main__':
  app.run(main)
