"""`python -m lm lora_merge --workdir=SRC --out=DST [--step=N]`: fold a LoRA run's adapters
into its base weights.

DST becomes a run of the same model without adapters (lora.rank = 0): config.json,
tokenizer/ and one checkpoint whose parameters are W + (alpha / rank) * A @ B (no optimizer
state). It loads like any run (lm.generate, lm.api.load) and can be `init_from` for more
fine-tuning (lm/tools/lora_merge.py).
"""

from __future__ import annotations

from absl import flags, logging

from lm import cli
from lm.errors import UserError
from lm.tools.lora_merge import merge_workdir

_WORKDIR = flags.DEFINE_string('workdir', None, 'The LoRA run (a training workdir) to merge.')
_OUT = flags.DEFINE_string('out', None, 'New workdir for the merged model; must not exist yet.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to merge; default: the latest.')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value or not _OUT.value:
    raise UserError('--workdir (the LoRA run) and --out (a new directory) are required')
  merge_workdir(_WORKDIR.value, _OUT.value, _STEP.value)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
