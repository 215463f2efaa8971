"""Orbax checkpoints: train state, each process's data-iterator state and the config, per step.

Layout of `<directory>/<step>/` (orbax writes `<step>.orbax-checkpoint-tmp` and renames it
once every process has finished, so a crash mid-save never touches an earlier step):

  state/                        params, opt_state, step, rng (OCDBT + zarr; restored onto
                                whatever sharding the caller asks for)
  data_state/process_I-of-N.json  each process's data-iterator state (written by that process)
  config/config.json            the resolved config the run used
  metrics/metrics               {"eval_loss": ...}, used to keep the best checkpoint

All processes call every method; orbax picks the host that writes shared files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Self

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm.checkpoint import handlers
from lm.errors import CheckpointError
from lm.workdir import CONFIG_FILE  # each step keeps the run's config under the same name

STATE, DATA_STATE, CONFIG = 'state', 'data_state', 'config'
_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # orbax's in-progress step directories
_ROOT_METADATA = 'metadata'  # orbax CheckpointManager's root metadata directory
_ROOT_MARKER = {'format': 'lm-checkpoint', 'version': 1}
# Files every complete lm checkpoint holds (orbax reports the rest when it reads them).
_REQUIRED = ('_CHECKPOINT_METADATA', f'{STATE}/_METADATA', f'{CONFIG}/{CONFIG_FILE}', DATA_STATE)

log = logging.getLogger(__name__)


# ---- the checkpointer -------------------------------------------------------------------


def _as_path(directory: str | os.PathLike) -> epath.Path:
  s = os.fspath(directory)
  return epath.Path(s if '://' in s else os.path.abspath(os.path.expanduser(s)))


def _keystr(path: Sequence[Any]) -> str:
  return jax.tree_util.keystr(tuple(path), simple=True, separator='.')


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_keystr(p): tuple(getattr(leaf, 'shape', ())) for p, leaf in leaves}


class Checkpointer:
  """Saves and restores (state, data_state, config) under one directory with Orbax.

  Keeps the last `keep` checkpoints and the best by eval loss. With `async_save` the
  arrays are copied to host memory in `save` and written in the background; call
  `wait()` (or `close()`) before reading them from another program. `read_only` is for
  readers (eval, inference) that must not clean up or write a training run's directory.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    if not isinstance(keep, int) or keep < 1:
      raise CheckpointError(f'keep={keep!r}: keep at least the last checkpoint '
                            '(checkpoint.keep >= 1).')
    self.directory = _as_path(directory)
    self._read_only = read_only
    self._closed = False
    _check_contents(self.directory)
    self.damaged = handlers.damaged_steps(self.directory)  # step -> why; orbax never sees them

    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(STATE, ocp.args.StandardSave)
    registry.add(STATE, ocp.args.StandardRestore)
    # params only (lm.run.load_run): a partial restore of the same files
    registry.add(STATE, ocp.args.PyTreeRestore, ocp.handlers.PyTreeCheckpointHandler())
    data = handlers.DataStateHandler()
    registry.add(DATA_STATE, handlers.DataStateSave, data)
    registry.add(DATA_STATE, handlers.DataStateRestore, data)
    config = ocp.handlers.JsonCheckpointHandler(filename=CONFIG_FILE)
    registry.add(CONFIG, ocp.args.JsonSave, config)
    registry.add(CONFIG, ocp.args.JsonRestore, config)
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=handlers.LatestAndBest(keep),
        # best_fn is what makes orbax write (and reload) each checkpoint's metrics.
        best_fn=lambda m: handlers.eval_loss(m) if handlers.eval_loss(m) is not None else math.inf,
        best_mode='min',
        cleanup_tmp_directories=not read_only,  # debris of a save that crashed
        create=not read_only,
        read_only=read_only,
        step_name_format=handlers.SkipSteps(ocp.path.step.standard_name_format(),
                                            set(self.damaged)),
    )
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, handler_registry=registry,
          # Orbax checks that its metadata/ directory exists after making it, which an
          # object store (gs:// through fsspec) has not until a file is in it: no marker there.
          metadata=None if read_only or '://' in str(self.directory) else _ROOT_MARKER)
    except Exception as e:  # orbax raises many kinds
      raise CheckpointError(f'cannot open checkpoint directory {self.directory}: {e}. '
                            'Delete it or pick another --workdir.') from e

  # ---- queries ----------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps of the checkpoints present (including one still being written), ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The step with the lowest eval loss, or None if no checkpoint was saved with one."""
    scored = [(loss, -s) for s in self.all_steps()
              if (loss := handlers.eval_loss(self._manager.metrics(s))) is not None]
    return -min(scored)[1] if scored else None

  def step_path(self, step: int) -> epath.Path:
    return self.directory / str(step)

  # ---- save -------------------------------------------------------------------------------

  def save(self, step: int, state: Any, *, data_state: dict, config_json: str,
           eval_loss: float | None = None, force: bool = False) -> None:
    """Writes checkpoint `step` (in the background when async); all processes call it.

    A step that is already saved is skipped, or replaced when `force`. Saving a step
    older than the latest is an error: it would break "latest = newest state".
    """
    if self._read_only:
      raise CheckpointError(f'{self.directory} was opened read_only; cannot save step {step}.')
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
      raise CheckpointError(f'step={step!r} must be a non-negative int.')
    try:
      config = json.loads(config_json)
    except (TypeError, json.JSONDecodeError) as e:
      raise CheckpointError(f'config_json is not valid JSON ({e}); pass '
                            'lm.config.to_json(config).') from e
    if not isinstance(data_state, dict):
      raise CheckpointError(f'data_state must be a dict, got {type(data_state).__name__}.')
    try:
      json.dumps(data_state)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f'data_state is not JSON-serializable ({e}); the data iterator '
                            'state must hold only dicts, lists, strings, numbers and bools.') from e

    if step in self.damaged:
      raise CheckpointError(
          f'cannot save step {step}: {self.step_path(step)} holds a damaged checkpoint '
          f'({self.damaged[step]}), left as it was. Delete it to let this run save step {step}.')
    self.wait()  # one save in flight at a time; reports a failed previous one as such
    steps = self.all_steps()
    if step in steps:
      if not force:
        log.info('checkpoint for step %d already exists in %s; not saving it again', step,
                 self.directory)
        return
      self.wait()
      self._manager.delete(step)
    elif steps and step < steps[-1]:
      raise CheckpointError(
          f'cannot save step {step}: {self.directory} already holds the newer step {steps[-1]}. '
          'Is another run using this --workdir? Pick another one.')

    metrics = {} if eval_loss is None else {'eval_loss': float(eval_loss)}
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA_STATE: handlers.DataStateSave(data_state),
        CONFIG: ocp.args.JsonSave(config),
    })
    try:
      self._manager.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:
      raise CheckpointError(f'saving step {step} to {self.step_path(step)} failed: {e}. '
                            'Earlier checkpoints are untouched.') from e

  def wait(self) -> None:
    """Blocks until a background save has finished; raises if it failed."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:
      raise CheckpointError(f'a background save in {self.directory} failed: {e}. '
                            'Earlier checkpoints are untouched.') from e

  # ---- restore ----------------------------------------------------------------------------

  def _restorable_step(self, step: int | None, steps: list[int], *, if_none: str) -> int:
    """`step` (None: the latest of `steps`) once it is saved and its files are all there;
    a CheckpointError naming the directory otherwise (`if_none`: the fix for no checkpoint)."""
    if step is None:
      if not steps:
        raise CheckpointError(f'no checkpoint in {self.directory}; {if_none}.')
      step = steps[-1]
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory}; '
                            f'it holds steps {steps}.')
    self._check_files(step, steps)
    return step

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, str]:
    """Returns (state, data_state, config_json) of `step` (default: the latest).

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding`; the arrays
    land with exactly that sharding, whatever mesh wrote them. The config comes back as
    indented JSON (the `lm.config.to_json` format).
    """
    self.wait()
    steps = self.all_steps()
    step = self._restorable_step(step, steps, if_none='check latest_step() first')
    path = self.step_path(step)
    self._check_abstract_state(step, steps, abstract_state)
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state),
        DATA_STATE: handlers.DataStateRestore(),
        CONFIG: ocp.args.JsonRestore(),
    })
    try:
      restored = self._manager.restore(step, args=args)
    except CheckpointError:
      raise
    except Exception as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise CheckpointError(
          f'checkpoint {path} cannot be read ({type(e).__name__}: {first[:500]}); its files are '
          f'damaged or truncated. {_what_to_do(path, step, steps)}') from e
    return restored[STATE], dict(restored[DATA_STATE]), json.dumps(restored[CONFIG], indent=2)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step) of `step` (default: the latest): only the 'params' subtree is read,
    not the optimizer's moments, onto the shardings of `abstract_params` (a pytree of
    jax.ShapeDtypeStruct with `.sharding`). What loaders of a trained run use."""
    steps = self.all_steps()
    step = self._restorable_step(step, steps, if_none='train the run first')
    path = self.step_path(step)
    self._check_abstract_state(step, steps, {'params': abstract_params}, partial=True)
    target = {'params': abstract_params}
    args = ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)})
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise CheckpointError(
          f'checkpoint {path} cannot be read ({type(e).__name__}: {first[:500]}); its files are '
          f'damaged or truncated. {_what_to_do(path, step, steps)}') from e
    return restored[STATE]['params'], step

  def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """Dotted key -> shape of every array of the state saved at `step`."""
    return _flat_shapes(self._manager.item_metadata(step)[STATE])

  def saved_keys(self, step: int) -> set[str]:
    """The top-level keys of the state saved at `step` ('params', 'opt_state', ...)."""
    return set(self._manager.item_metadata(step)[STATE].keys())

  def _check_files(self, step: int, steps: list[int]) -> None:
    path = self.step_path(step)
    missing = [f for f in _REQUIRED if not (path / f).exists()]
    if not missing:
      return
    if len(missing) == len(_REQUIRED):
      raise CheckpointError(f'{path} is not an lm checkpoint (it lacks {", ".join(missing)}). '
                            f'{_what_to_do(path, step, steps)}')
    raise CheckpointError(f'checkpoint {path} is incomplete: {", ".join(missing)} missing '
                          f'(damaged after it was written?). {_what_to_do(path, step, steps)}')

  def _check_abstract_state(self, step: int, steps: list[int], abstract_state: Any,
                            partial: bool = False) -> None:
    path = self.step_path(step)
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    for p, leaf in leaves:
      if getattr(leaf, 'sharding', None) is None:
        raise CheckpointError(
            f"abstract_state['{_keystr(p)}'] has no sharding; build it with "
            'jax.ShapeDtypeStruct(shape, dtype, sharding=...) so the restore knows where it goes.')
    try:
      saved = _flat_shapes(self._manager.item_metadata(step)[STATE])
    except Exception as e:
      raise CheckpointError(f'cannot read the array metadata of checkpoint {path} ({e}). '
                            f'{_what_to_do(path, step, steps)}') from e
    wanted = _flat_shapes(abstract_state)
    fix = (f'The model/optimizer differ from the run that wrote it; compare the config with '
           f'{path / CONFIG / CONFIG_FILE}, or pick another --workdir.')
    for key, shape in wanted.items():
      if key not in saved:
        raise CheckpointError(f"state key '{key}' (shape {shape}) is not in checkpoint {path}. "
                              + fix)
      if saved[key] != shape:
        raise CheckpointError(f"state key '{key}' has shape {shape} but checkpoint {path} holds "
                              f'shape {saved[key]}. ' + fix)
    for key, shape in saved.items():
      if key not in wanted and not (partial and key.split('.')[0] not in abstract_state):
        raise CheckpointError(f"checkpoint {path} holds '{key}' (shape {shape}), which the state "
                              'to restore lacks. ' + fix)

  # ---- lifetime ---------------------------------------------------------------------------

  def close(self) -> None:
    """Finishes background work (saves, deletions) and releases orbax's threads."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def _what_to_do(path: epath.Path, step: int, steps: list[int]) -> str:
  older = [s for s in steps if s < step]
  then = (f'resume from step {older[-1]}' if older else 'start from scratch')
  return f'Delete {path} to {then}, or pick another --workdir.'


def _check_contents(directory: epath.Path) -> None:
  """Refuses a directory holding anything but orbax step directories and their debris."""
  if not directory.exists():
    return
  if not directory.is_dir():
    raise CheckpointError(f'{directory} is a file, not a checkpoint directory; move it away or '
                          'pick another --workdir.')
  foreign = []
  for p in sorted(directory.iterdir()):
    name = p.name
    if name.startswith('.'):
      continue  # .nfs*, .DS_Store and friends
    stem = name.split(_TMP_SUFFIX)[0]
    if p.is_dir() and (name.isdigit() or (_TMP_SUFFIX in name and stem.isdigit())
                       or name == _ROOT_METADATA):
      continue
    foreign.append(name)
  if foreign:
    shown = ', '.join(foreign[:5]) + (', ...' if len(foreign) > 5 else '')
    raise CheckpointError(
        f'{directory} holds files that are not lm checkpoints ({shown}). Refusing to write '
        'checkpoints among them: delete them or pick another --workdir.')
