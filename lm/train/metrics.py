"""What the training loop reports: metrics.jsonl, TensorBoard scalars and a tqdm progress bar.

Only process 0 writes; on the others every method is a no-op, so the loop calls them
unconditionally. The workdir may be a URL (gs://...): metrics.jsonl goes through etils.epath
(an object store cannot append, so a URL's file is rewritten whole, at most every few
seconds and at close), TensorBoard events through tensorboardX (local, gs:// and s3://).
Keys the loop uses: 'train/loss', 'train/tokens_per_sec', 'train/lr',
'train/grad_norm', 'eval/loss', 'eval/perplexity', 'eval/bits_per_byte'.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Self

import tqdm
from etils import epath

from lm import workdir as workdir_lib

METRICS_FILE = workdir_lib.METRICS_FILE
TB_DIR = workdir_lib.TB_DIR
_TB_URL_SCHEMES = ('gs://', 's3://')  # what tensorboardX writes besides local files
_URL_FLUSH_SECS = 10.0


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported on first use without torch.

  tensorboardX imports torch at module load whenever it is installed (only to accept torch
  tensors as values); that costs every run ~1.5 CPU-s and ~300 MB. We log Python floats, so
  torch is hidden from that one import: `sys.modules['torch'] = None` makes `import torch`
  raise ImportError, which tensorboardX catches. A torch the process already imported is
  left alone."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # type: ignore[assignment]
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The complete JSON lines of a metrics.jsonl (a torn last line from a crash is skipped)."""
  rows = []
  for line in epath.Path(path).read_text(encoding='utf-8').splitlines():
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
  A start from scratch (`start_step` 0) drops every old line, the step-0 row of a run that
  evaluates before its first step (DPO) included: that row is written again.
  """

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int = 0,
               enabled: bool = True, tensorboard: bool = True):
    import jax  # here, not at the top: read_metrics (lm.plot, lm.sweep) needs no jax
    self.workdir = workdir_lib.name(workdir)
    self.active = enabled and jax.process_index() == 0
    self._file = self._tb = self._bar = None
    self._lines: list[str] | None = None  # a URL workdir's whole file, rewritten
    self._flushed = 0.0
    if not self.active:
      return
    workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
    self._path = workdir_lib.metrics_path(workdir)
    kept = _lines_upto(self._path, start_step) if start_step and self._path.exists() else []
    if workdir_lib.is_url(self.workdir):
      self._lines = kept
      self._flush(force=True)
    else:
      if self._path.exists() and kept != self._path.read_text(encoding='utf-8').splitlines(True):
        workdir_lib.write_text(self._path, ''.join(kept))  # a crash leaves the old file
      self._file = open(self._path, 'a', encoding='utf-8')  # noqa: SIM115  (closed in close())
    url = workdir_lib.is_url(self.workdir)
    if tensorboard and (not url or self.workdir.startswith(_TB_URL_SCHEMES)):
      self._tb = _summary_writer_class()(workdir_lib.name(workdir_lib.tb_dir(workdir)),
                               purge_step=start_step + 1, flush_secs=10)
    tty = sys.stderr.isatty()
    self._bar = tqdm.tqdm(
        total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
        mininterval=1.0 if tty else 10.0,  # a log file gets a line every 10 s at most
        smoothing=0.1, file=sys.stderr)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends {"step": step, **metrics} as one JSON line and logs each scalar to TensorBoard."""
    if not self.active:
      return
    values = {k: float(v) for k, v in metrics.items()}
    row = {'step': int(step), **{k: _number(v) for k, v in values.items()}}
    line = json.dumps(row, allow_nan=False) + '\n'
    if self._lines is not None:
      self._lines.append(line)
      self._flush()
    elif self._file is not None:
      self._file.write(line)
      self._file.flush()  # a crash loses at most the line being written
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))

  def _flush(self, force: bool = False) -> None:
    """A URL workdir's metrics.jsonl, written whole (object stores have no append)."""
    now = time.monotonic()
    if self._lines is not None and (force or now - self._flushed >= _URL_FLUSH_SECS):
      self._path.write_text(''.join(self._lines), encoding='utf-8')
      self._flushed = now

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
    if self._lines is not None:
      self._flush(force=True)
      self._lines = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def _lines_upto(path: epath.Path, start_step: int) -> list[str]:
  """The complete lines of `path` for steps <= start_step (a torn last line is dropped)."""
  keep = []
  for line in path.read_text(encoding='utf-8').splitlines(True):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get('step'), int) and row['step'] <= start_step:
      keep.append(line if line.endswith('\n') else line + '\n')
  return keep


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.1f}{unit}'
  return f'{x:.0f}'
