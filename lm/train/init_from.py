"""Parameters of another run's checkpoint as the start of a fresh run (`train.init_from`)."""

from __future__ import annotations

import pathlib

import optax

from lm.checkpoint import Checkpointer, CheckpointError
from lm.train.state import ModelDef, abstract_state


def checkpoint_location(path: str) -> tuple[pathlib.Path, int | None]:
  """(checkpoints directory, step or None for the latest) from a workdir, its checkpoints/
  directory or one step directory."""
  p = pathlib.Path(path).expanduser().resolve()
  if (p / 'checkpoints').is_dir():
    return p / 'checkpoints', None
  if p.name.isdigit() and p.is_dir():
    return p.parent, int(p.name)
  if p.is_dir():
    return p, None
  raise CheckpointError(f'train.init_from={path!r} does not exist; give a training workdir, '
                        'its checkpoints/ directory or one step directory.')


def restore_params(path: str, model_def: ModelDef, optimizer: optax.GradientTransformation,
                   seed: int, shardings: dict) -> dict:
  """The parameters saved at `path`, placed with `shardings['params']`. The checkpoint must
  have this run's model and optimizer structure (e.g. the run it was forked from)."""
  directory, step = checkpoint_location(path)
  with Checkpointer(directory, read_only=True) as checkpoints:
    step = checkpoints.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'train.init_from={path!r}: {directory} holds no checkpoint.')
    state, _, _ = checkpoints.restore(abstract_state(model_def, optimizer, seed, shardings), step)
  return state['params']
