"""`python -m lm plan --config=configs/X.py [--devices=N]` (or `python -m lm.plan`): plan a
run before renting the machine.

Prints the parameter count, FLOPs per token and an estimate of the memory each device
needs for parameters, optimizer state, gradients and activations under the config's mesh
and remat policy; then lowers and compiles the real train step (lm.train.build, what
`python -m lm.main` runs) for N devices with abstract state and prints XLA's memory
analysis beside it. With fewer than N devices here, the plan re-runs itself in a
subprocess with N fake CPU devices; otherwise it uses the first N.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm import config as config_lib
from lm.errors import UserError

_CONFIG = config_lib.define_config_flag(
    'config', 'configs/default.py',
    'Experiment config file to plan; override fields with --config.<field>=<value>.')
_DEVICES = flags.DEFINE_integer(
    'devices', 0, 'Devices to plan for (the whole job, all hosts). 0: the product of the '
    "config's mesh sizes when none is -1, else this process's device count.")
_COMPILE = flags.DEFINE_boolean(
    'compile', True, 'Also lower and compile the train step for --devices devices (fake CPU '
    'devices when this process has fewer) and print XLA\'s memory analysis beside the '
    'estimate (slow for billion-parameter models on a small CPU).')
_VOCAB = flags.DEFINE_integer(
    'vocab_size', 0, 'Vocabulary size when config.model.vocab_size is 0 (default: the '
    "sentencepiece size the config asks for, or the byte tokenizer's 259; a char "
    'tokenizer needs this flag).')
_DEVICE_MEMORY = flags.DEFINE_float(
    'device_memory_gib', 0.0, 'Memory of one device in GiB (e.g. 16 for TPU v5e, 80 for '
    'H100); when given, the plan says whether the estimate fits. 0: no check.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  config = cli.config_from_flag(_CONFIG)
  if _DEVICES.value < 0:
    raise UserError(f'--devices={_DEVICES.value} must be >= 1 (or 0 for the default)')
  # jax, and lm.tools.plan's flax and optax: loaded once the flags and config are checked
  import jax

  from lm.tools import plan as plan_lib
  num_devices = _DEVICES.value or plan_lib.default_devices(config)
  if jax.device_count() < num_devices:
    if os.environ.get(plan_lib.REEXEC_ENV):
      raise UserError(f'asked XLA for {num_devices} CPU devices but got {jax.device_count()}')
    # Too few devices here: plan in a child with N fake CPU devices (the last --devices wins).
    sys.stdout.flush()
    child = subprocess.run([sys.executable, '-m', 'lm.cli.plan', *sys.argv[1:],
                            f'--devices={num_devices}'],
                           env=plan_lib.reexec_env(num_devices), check=False)
    sys.exit(child.returncode)
  print(f'plan: {config_flags.get_config_filename(flags.FLAGS["config"])} on {num_devices} '
        'device(s)')
  plan = plan_lib.make_plan(config, num_devices=num_devices, vocab_size=_VOCAB.value)
  if _COMPILE.value:
    plan.xla = plan_lib.compile_memory(plan)
  print(plan_lib.format_plan(plan, device_memory_gib=_DEVICE_MEMORY.value))
  sys.stdout.flush()


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
