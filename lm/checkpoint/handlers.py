"""The Orbax pieces lm.checkpoint plugs in: each process's data-iterator state, which steps
to keep, and the step naming that sets damaged steps aside."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from lm.errors import CheckpointError

# Small JSON files orbax parses when it opens a directory: one that is damaged would make
# every step unopenable, so such a step is set aside (not deleted) and the others open.
JSON_READ_AT_OPEN = ('_CHECKPOINT_METADATA', 'metrics/metrics')

log = logging.getLogger('lm.checkpoint')


# ---- per-process data-iterator state ----------------------------------------------------


def _data_state_file(index: int, count: int) -> str:
  return f'process_{index}-of-{count}.json'


class DataStateHandler(ocp.handlers.AsyncCheckpointHandler):
  """Every process writes (and reads back) its own data-iterator state as JSON."""

  @staticmethod
  def _write(directory: epath.Path, text: str) -> None:
    (directory / _data_state_file(jax.process_index(), jax.process_count())).write_text(text)

  async def async_save(self, directory: epath.Path, args: DataStateSave) -> list[Any]:
    text = json.dumps(args.item)  # now, so a caller mutating the dict later cannot race us

    async def write() -> None:
      self._write(directory, text)

    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name='lm_data_state')]

  def save(self, directory: epath.Path, args: DataStateSave) -> None:
    self._write(directory, json.dumps(args.item))

  def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> dict:
    del args
    mine = directory / _data_state_file(jax.process_index(), jax.process_count())
    if mine.exists():
      return json.loads(mine.read_text())
    files = sorted(directory.glob('process_*-of-*.json'))
    if not files:
      raise FileNotFoundError(f'{directory} holds no process_*-of-*.json data-iterator state')
    texts = {f.read_text() for f in files}
    if len(texts) == 1:  # every process saved the same state: any process count can resume it
      return json.loads(texts.pop())
    saved_by = files[0].stem.rpartition('-of-')[2]
    raise CheckpointError(
        f'{directory}: the data-iterator state was saved by {saved_by} processes, each at its '
        f'own position, but this run has {jax.process_count()}; resume with {saved_by} '
        'processes.')

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  item: dict


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


# ---- which checkpoints to keep ----------------------------------------------------------


def eval_loss(metrics: Any) -> float | None:
  loss = metrics.get('eval_loss') if isinstance(metrics, dict) else None
  return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None


@dataclasses.dataclass
class LatestAndBest(ocp.checkpoint_managers.PreservationPolicy):
  """Keeps the newest `keep` checkpoints and the one with the lowest finite eval loss."""

  keep: int

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    n = len(checkpoints)
    out = [i >= n - self.keep for i in range(n)]
    scored = [(loss, -i) for i, c in enumerate(checkpoints)
              if (loss := eval_loss(c.metrics)) is not None]
    if scored:
      out[-min(scored)[1]] = True  # ties go to the newer checkpoint
    return out


# ---- damaged steps ----------------------------------------------------------------------


def damaged_steps(directory: epath.Path) -> dict[int, str]:
  """Step -> what is wrong, for the step directories whose small JSON files (the ones orbax
  reads when it opens the directory) do not parse: truncated by a full disk or a copy."""
  damaged: dict[int, str] = {}
  if not directory.is_dir():
    return damaged
  for p in directory.iterdir():
    if not (p.name.isdigit() and p.is_dir()):
      continue
    for name in JSON_READ_AT_OPEN:
      f = p / name
      if not f.exists():
        continue
      try:
        json.loads(f.read_text())
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        damaged[int(p.name)] = f'{f} is truncated or damaged: {e}'
        break
  for step, why in sorted(damaged.items()):
    log.warning('checkpoint step %d is set aside: %s', step, why)
  return damaged


class SkipSteps(ocp.path.step.NameFormat):
  """Orbax's step naming, blind to the `skip` steps (damaged ones, left on disk)."""

  def __init__(self, inner: ocp.path.step.NameFormat, skip: set[int]):
    self._inner, self._skip = inner, skip

  def build_name(self, step: int) -> str:
    return self._inner.build_name(step)

  def find_all(self, base_path):
    return (m for m in self._inner.find_all(base_path) if m.step not in self._skip)

  def find_step(self, base_path, step: int):
    if step in self._skip:
      raise ValueError(f'step {step} is damaged and set aside')
    return self._inner.find_step(base_path, step)
