"""What the training loop reports: metrics.jsonl, TensorBoard scalars and a tqdm progress bar.

Only process 0 writes; on the others every method is a no-op, so the loop calls them
unconditionally. Keys the loop uses: 'train/loss', 'train/tokens_per_sec', 'train/lr',
'train/grad_norm', 'eval/loss', 'eval/perplexity', 'eval/bits_per_byte'.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any, Self

import jax
import tqdm

METRICS_FILE = 'metrics.jsonl'
TB_DIR = 'tb'


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The complete JSON lines of a metrics.jsonl (a torn last line from a crash is skipped)."""
  rows = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict) and isinstance(row.get('step'), int):
        rows.append(row)
  return rows


def _number(v: Any) -> float | None:
  """A metric value as a float for JSON; NaN/inf become null so the file stays strict JSON."""
  x = float(v)
  return x if math.isfinite(x) else None


class MetricsWriter:
  """Appends metrics to <workdir>/metrics.jsonl and <workdir>/tb, and draws the progress bar.

  On resume (`start_step` > 0) lines with step > start_step, left by the interrupted run,
  are dropped first so the file stays monotonic; TensorBoard hides them via purge_step.
  """

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int = 0,
               enabled: bool = True, tensorboard: bool = True):
    self.workdir = os.fspath(workdir)
    self.active = enabled and jax.process_index() == 0
    self._file = self._tb = self._bar = None
    if not self.active:
      return
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, METRICS_FILE)
    if os.path.exists(path):
      _truncate_after(path, start_step)
    self._file = open(path, 'a', encoding='utf-8')  # noqa: SIM115  (closed in close())
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf

      self._tb = SummaryWriter(os.path.join(self.workdir, TB_DIR), purge_step=start_step + 1,
                               flush_secs=10)
    tty = sys.stderr.isatty()
    self._bar = tqdm.tqdm(
        total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
        mininterval=1.0 if tty else 10.0,  # a log file gets a line every 10 s at most
        smoothing=0.1, file=sys.stderr)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends {"step": step, **metrics} as one JSON line and logs each scalar to TensorBoard."""
    if not self.active or self._file is None:
      return
    values = {k: float(v) for k, v in metrics.items()}
    row = {'step': int(step), **{k: _number(v) for k, v in values.items()}}
    self._file.write(json.dumps(row, allow_nan=False) + '\n')
    self._file.flush()  # a crash loses at most the line being written
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def progress(self, step: int, *, loss: float, tokens_per_sec: float) -> None:
    """Moves the bar to `step` and shows loss and tokens/s (redrawn at most every few seconds)."""
    if self._bar is None:
      return
    self._bar.set_postfix(loss=f'{float(loss):.4f}', tok_s=_si(float(tokens_per_sec)),
                          refresh=False)
    if step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def log(self, msg: str) -> None:
    """Prints a line above the bar without breaking it."""
    if not self.active:
      return
    if self._bar is not None:
      self._bar.write(msg, file=sys.stderr)
    else:
      print(msg, file=sys.stderr, flush=True)

  def close(self) -> None:
    """Flushes and closes the files and the bar; safe to call twice."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def _truncate_after(path: str, start_step: int) -> None:
  """Rewrites `path` without lines for steps > start_step (and without a torn last line)."""
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get('step'), int) and row['step'] <= start_step:
      keep.append(line if line.endswith('\n') else line + '\n')
  if len(keep) == len(lines) and all(line.endswith('\n') for line in lines):
    return
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(keep)
  os.replace(tmp, path)  # atomic: a crash here leaves the old file, never half of one


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.1f}{unit}'
  return f'{x:.0f}'
