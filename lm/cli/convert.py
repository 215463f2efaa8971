"""`python -m lm convert from-hf|to-hf`: Hugging Face GPT-2 / LLaMA weights in and out.

    python -m lm.convert from-hf --hf_dir=DIR --workdir=OUT [--config=configs/X.py --config.a=v]
    python -m lm.convert to-hf --workdir=DIR --hf_dir=OUT [--step=N]

from-hf writes a new run (config.json, tokenizer/, checkpoint 0, config.py) from DIR's
config.json + model.safetensors (and tokenizer.json, if there); to-hf writes a run's
checkpoint as config.json + model.safetensors that transformers loads (lm/compat/hf.py).
"""

from __future__ import annotations

import re
import sys

from absl import flags, logging

from lm import cli
from lm import config as config_lib
from lm.errors import UserError

COMMANDS = ('from-hf', 'to-hf')
_DEFAULT_CONFIG = 'configs/default.py'
_CONFIG_FLAG = re.compile(r'^--?config(=|$)')
if not any(_CONFIG_FLAG.match(a) for a in sys.argv[1:]):
  sys.argv.insert(1, f'--config={_DEFAULT_CONFIG}')  # loads (with overrides) at parsing

_HF_DIR = flags.DEFINE_string(
    'hf_dir', None, 'from-hf: the Hugging Face model directory to read (config.json, '
    'model.safetensors, optional tokenizer.json); to-hf: the directory to write it to.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'from-hf: the new workdir to write (must not hold a run); to-hf: the '
    'training workdir to export.')
_STEP = flags.DEFINE_integer('step', None, 'to-hf: the checkpoint step to export; default: '
                             'the latest.')
_CONFIG = config_lib.define_config_flag(
    'config', _DEFAULT_CONFIG,
    'from-hf: the experiment config the workdir starts from (data, optimizer, training); '
    "its model architecture is replaced by the HF model's. Override fields with "
    '--config.a.b=v.')


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise UserError(f'give one command, {" or ".join(COMMANDS)}: python -m lm.convert '
                    'from-hf --hf_dir=DIR --workdir=OUT, or python -m lm.convert to-hf '
                    '--workdir=DIR --hf_dir=OUT [--step=N]')
  for name, flag in (('--hf_dir', _HF_DIR), ('--workdir', _WORKDIR)):
    if not flag.value:
      raise UserError(f'{argv[1]} needs {name}.')
  from lm.compat import hf  # jax, flax, orbax: once the flags are checked
  if argv[1] == 'from-hf':
    hf.import_hf(_HF_DIR.value, _WORKDIR.value, cli.config_from_flag(_CONFIG))
  else:
    hf.export_hf(_WORKDIR.value, _HF_DIR.value, _STEP.value)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
