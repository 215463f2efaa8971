"""What only a fine-tune needs: `init_from`, the run it starts from.

The base run is read through its workdir (lm.workdir, lm.run.load_run): its saved config
and tokenizer, and the parameters of one checkpoint; its optimizer moments are restored
only with init_from_opt_state=True. Its data is never prepared again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from lm import parallel
from lm import run as run_lib
from lm import workdir as workdir_lib
from lm.checkpoint import Checkpointer
from lm.data.tokenizers import Tokenizer
from lm.errors import CheckpointError
from lm.model import ModelDef
from lm.train import build
from lm.train import optimizer as optimizer_lib

Log = Callable[[str], None]


def locate(init_from: str) -> tuple[str, int | None]:
  """(workdir, step or None for its latest) of `init_from`: a training workdir, its
  checkpoints/ directory or one checkpoints/<step> directory (local paths or URLs)."""
  p = workdir_lib.path(init_from)
  candidates: list[tuple[Any, int | None]] = [(p, None)]
  if p.name == workdir_lib.CHECKPOINT_DIR:
    candidates.append((p.parent, None))
  if p.name.isdigit() and p.parent.name == workdir_lib.CHECKPOINT_DIR:
    candidates.append((p.parent.parent, int(p.name)))
  for workdir, step in candidates:
    steps = workdir_lib.checkpoint_steps(workdir) if workdir_lib.has_config(workdir) else []
    if steps and (step is None or step in steps):
      return workdir_lib.name(workdir), step
  raise CheckpointError(
      f'init_from={init_from!r} holds no lm checkpoint; give a training workdir (with '
      f'{workdir_lib.CONFIG_FILE} and {workdir_lib.CHECKPOINT_DIR}/), its checkpoints/ '
      'directory or one checkpoints/<step> directory.')


def base_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer | None:
  """The tokenizer saved in the init_from run's workdir (None without init_from)."""
  if not cfg.init_from:
    return None
  workdir, _ = locate(cfg.init_from)
  return workdir_lib.load_tokenizer(workdir)


def load_init(cfg: ml_collections.ConfigDict, fresh_params: dict, mesh: Mesh,
              shardings: dict, optimizer: optax.GradientTransformation,
              log: Log = print) -> tuple[dict, Any]:
  """(params, opt_state or None) for step 0 of a fine-tune, from `cfg.init_from`;
  `fresh_params` (this run's initialisation) fills what the base lacks.

  The base run's parameters are restored onto this run's mesh (lm.run.load_run) and
  matched to this model by name: a parameter the base lacks (a new classification head,
  LoRA adapters) keeps its fresh initialisation (logged); a shape that differs is an
  error naming the parameter. The optimizer moments are read only for init_from_opt_state.
  """
  workdir, step = locate(cfg.init_from)
  if cfg.init_from_opt_state:
    base_params, opt_state, step = _restore_with_opt_state(workdir, step, mesh, shardings,
                                                           optimizer)
  else:
    run = run_lib.load_run(workdir, step, mesh=mesh)
    base_params, opt_state, step = run.params, None, run.step
  where = workdir_lib.name(workdir_lib.checkpoint_dir(workdir) / str(step))
  log(f'init_from: parameters of {where} (step {step})')
  params = _match(base_params, fresh_params, shardings['params'], log, where=where,
                  config_file=workdir_lib.name(workdir_lib.config_path(workdir)))
  return params, opt_state


def _restore_with_opt_state(workdir: str, step: int | None, mesh: Mesh, shardings: dict,
                            optimizer: optax.GradientTransformation) -> tuple[dict, Any, int]:
  """(base params, its optimizer state placed as this run's, step): the base's whole
  train state, whose optimizer must have this run's structure."""
  base_cfg = workdir_lib.read_config(workdir)
  tokenizer = workdir_lib.load_tokenizer(workdir)
  base_def = ModelDef.create(run_lib.model_config(base_cfg, tokenizer.vocab_size))
  base_sh = run_lib.param_shardings(base_def, mesh, parallel.rules_for(base_cfg.mesh))
  params = jax.eval_shape(base_def.init_params, jax.random.key(0))
  opt = jax.eval_shape(optimizer.init, params)
  rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  target = {
      'params': _with_shardings(params, base_sh),
      'opt_state': _with_shardings(opt, shardings['opt_state']),
      'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings['step']),
      'rng': jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=shardings['rng'])}
  with Checkpointer(workdir_lib.checkpoint_dir(workdir), read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
    saved = {k: v for k, v in ckpt.saved_shapes(step).items() if k.startswith('opt_state.')}
    wanted = {f'opt_state.{k}': v for k, v in _flat_shapes(opt).items()}
    if saved != wanted:
      raise CheckpointError(
          f'init_from_opt_state=True: the optimizer state in {workdir} has another structure '
          "than this run's optimizer (different optimizer settings, head or adapters, or a "
          'run written without one, e.g. by lm.convert); set init_from_opt_state=False.')
    state, _, _ = ckpt.restore(target, step)
  return state['params'], state['opt_state'], step


def _with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def _flat(tree: dict) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p, simple=True, separator='.'): x for p, x in leaves}


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  return {k: tuple(getattr(x, 'shape', ())) for k, x in _flat(tree).items()}


def _match(base_params: dict, fresh: dict, shardings: dict, log: Log, *, where: str,
           config_file: str) -> dict:
  """This model's parameters taken from `base_params` by name (see load_init)."""
  base, ours = _flat(base_params), _flat(fresh)
  extra = [k for k in base if k not in ours]
  if extra:
    shown = ', '.join(extra[:4]) + (', ...' if len(extra) > 4 else '')
    raise CheckpointError(f'init_from: {where} holds parameters this model lacks ({shown}); '
                          'a LoRA run must be merged first (python -m lm.lora_merge), and the '
                          'model settings (model.*, lora.*) must match the base run.')
  for k, x in ours.items():
    if k in base and tuple(base[k].shape) != tuple(x.shape):
      raise CheckpointError(f"init_from: parameter '{k}' has shape {tuple(base[k].shape)} in "
                            f'{where} but {tuple(x.shape)} in this model; make model.* match '
                            f'the base run (its config is {config_file}).')
  missing = [k for k in ours if k not in base]
  if missing:
    groups = sorted({k.split('.lora.')[0] + '.lora' if '.lora.' in k else k.split('.')[0]
                     for k in missing})
    log(f'init_from: freshly initialised (not in the base checkpoint): {", ".join(groups)}')
  flat_sh = _flat(shardings)
  leaves = jax.tree_util.tree_flatten_with_path(fresh)
  out = [jax.device_put(base[k].astype(x.dtype), flat_sh[k]) if k in base else x
         for k, x in ((jax.tree_util.keystr(p, simple=True, separator='.'), x)
                      for p, x in leaves[0])]
  return jax.tree_util.tree_unflatten(leaves[1], out)


# Moved to lm.train.build / lm.train.optimizer; these names stay for callers not yet moved.
build_optimizer = build.build_optimizer
state_shardings = build.state_shardings
summary_lines = build.summary_lines
train_only = optimizer_lib.train_only
trainable = optimizer_lib.lora_trainable
