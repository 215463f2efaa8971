"""Fold a LoRA run's adapters into its base weights.

`merge_workdir` loads a LoRA run (lm.run.load_run) and writes, through lm.run.write_run, a run
of the same model without adapters (lora.rank = 0) whose parameters are
W + (alpha / rank) * A @ B, at the same step, with no optimizer state. It loads like any run
and can be `init_from` for more fine-tuning.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.errors import WorkdirError
from lm.model import lora
from lm.run import load_run, write_run


def merge_workdir(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None,
                  log: Callable[[str], None] = print) -> str:
  """Writes the merged model of `workdir` (checkpoint `step`, default the latest) to the new
  workdir `out`; returns the merged checkpoint's path."""
  workdir_lib.check_new(out, '--out')
  config = workdir_lib.read_config(workdir)
  if config.lora.rank == 0:
    raise WorkdirError(f'{workdir_lib.name(workdir)} was trained without LoRA (lora.rank=0): '
                       'nothing to merge.')
  run = load_run(workdir, step, log=log)
  scale = run.config.lora.alpha / run.config.lora.rank
  params = jax.jit(lambda p: lora.merge_params(p, scale))(run.params)
  merged = config_lib.from_json(config_lib.to_json(run.config))
  merged.lora.rank = 0
  write_run(out, merged, params, run.tokenizer, step=run.step)
  path = os.fspath(workdir_lib.checkpoint_dir(out) / str(run.step))
  n_adapters, n_total = lora.count(run.params)
  log(f'merged {n_adapters:,} adapter parameters (rank {run.config.lora.rank}, alpha '
      f'{run.config.lora.alpha}) of {run.workdir} step {run.step} into '
      f'{n_total - n_adapters:,} base parameters: {path}')
  return path
