"""Fold a LoRA run's adapters into its base weights: `python -m lm.lora_merge --workdir=SRC
--out=DST [--step=N]`.

DST becomes a workdir of the same model without adapters (lora.rank = 0): config.json and
one checkpoint whose parameters are W + (alpha / rank) * A @ B, with a fresh optimizer
state. It loads like any run (lm.api.load, lm.generate) and can be `init_from` for more
fine-tuning.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

if __name__ == '__main__':  # flags exist only for the command line
  _WORKDIR = flags.DEFINE_string('workdir', None, 'The LoRA run (a training workdir) to merge.')
  _OUT = flags.DEFINE_string('out', None, 'New workdir for the merged model; must not exist yet.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to merge; default: the latest.')


def merge_workdir(workdir: str, out: str, step: int | None = None,
                  log=print) -> str:
  """Writes the merged model of `workdir` (checkpoint `step`, default latest) to `out`;
  returns the merged checkpoint's path."""
  import jax

  from lm import config as config_lib
  from lm import parallel
  from lm.checkpoint import Checkpointer, CheckpointError
  from lm.model import ModelConfig, ModelDef, lora
  from lm.train import finetune
  from lm.train.state import abstract_state

  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise CheckpointError(f'{config_path} not found; --workdir must be a training workdir.')
  if os.path.exists(out):
    raise CheckpointError(f'--out={out} already exists; give a new directory.')
  with open(config_path, encoding='utf-8') as f:
    cfg = config_lib.from_json(f.read())
  if cfg.lora.rank == 0:
    raise CheckpointError(f'{workdir} was trained without LoRA (lora.rank=0): nothing to merge.')
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 1, 1  # whatever devices this host has
  cfg = config_lib.resolve(cfg, num_devices=jax.device_count())
  mesh = parallel.build_mesh(cfg.mesh)
  model_cfg = ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len).with_lora(cfg.lora)
  model_def = ModelDef.create(model_cfg)
  optimizer, _ = finetune.build_optimizer(cfg)
  rules = parallel.rules_for(cfg.mesh)
  shardings = finetune.state_shardings(model_def, optimizer, mesh, rules, cfg)
  with Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'{workdir}/checkpoints holds no checkpoint yet.')
    state, data_state, _ = ckpt.restore(
        abstract_state(model_def, optimizer, cfg.seed, shardings), step)

  merged_cfg = config_lib.from_json(config_lib.to_json(cfg))
  merged_cfg.lora.rank = 0
  merged_def = ModelDef.create(ModelConfig.from_config(merged_cfg.model,
                                                       seq_len=cfg.data.seq_len))
  merged_opt, _ = finetune.build_optimizer(merged_cfg)
  merged_sh = finetune.state_shardings(merged_def, merged_opt, mesh, rules, merged_cfg)
  params = jax.jit(lambda p: lora.merge_params(p, cfg.lora.alpha / cfg.lora.rank),
                   out_shardings=merged_sh['params'])(state['params'])
  merged = {'params': params,
            'opt_state': jax.jit(merged_opt.init, out_shardings=merged_sh['opt_state'])(params),
            'step': state['step'], 'rng': state['rng']}
  config_json = config_lib.to_json(merged_cfg)
  os.makedirs(out)
  with open(os.path.join(out, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config_json)
  with Checkpointer(os.path.join(out, 'checkpoints'), async_save=False) as ckpt:
    ckpt.save(step, merged, data_state=data_state, config_json=config_json)
    path = str(ckpt.step_path(step))
  n_adapters, n_total = lora.count(state['params'])
  log(f'merged {n_adapters:,} adapter parameters (rank {cfg.lora.rank}, alpha '
      f'{cfg.lora.alpha}) of {workdir} step {step} into {n_total - n_adapters:,} base '
      f'parameters: {path}')
  return path


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value or not _OUT.value:
    print('error: --workdir (the LoRA run) and --out (a new directory) are required',
          file=sys.stderr)
    sys.exit(1)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from lm.checkpoint import CheckpointError
  from lm.config import ConfigError
  try:
    merge_workdir(_WORKDIR.value, _OUT.value, _STEP.value)
  except (CheckpointError, ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
