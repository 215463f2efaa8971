"""Loss curves of one or more runs on one figure.

Train loss is drawn solid and eval loss dashed with markers, one colour per run, against
the step or the tokens seen (step * train.batch_size * data.seq_len from each run's config).
Headless: a bare matplotlib Figure written to a PNG, so the caller's backend (a notebook's
inline one) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.ticker
from matplotlib import rcParams
from matplotlib.figure import Figure

from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.train.metrics import read_metrics

X_AXES = ('step', 'tokens')
DEFAULT_OUT = 'loss.png'


class PlotError(UserError):
  """A workdir or option the plot cannot use; the message names it and the fix."""


def tokens_per_step(workdir: str | os.PathLike) -> int:
  """train.batch_size * data.seq_len of the run in `workdir`."""
  if not workdir_lib.has_config(workdir):
    raise PlotError(f'{workdir_lib.config_path(workdir)} not found: --x=tokens needs the '
                    'config.json a training run writes; use --x=step for this workdir.')
  cfg = workdir_lib.read_config(workdir)
  return int(cfg.train.batch_size) * int(cfg.data.seq_len)


def load_curves(workdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """{'train/loss': [(step, loss), ...], 'eval/loss': [...]} of one workdir (nulls skipped)."""
  path = workdir_lib.metrics_path(workdir)
  if not path.exists():
    raise PlotError(f'{path} not found: is {workdir} a training workdir (python -m lm.main '
                    '--workdir=...)? It has no metrics yet.')
  curves: dict[str, list[tuple[int, float]]] = {'train/loss': [], 'eval/loss': []}
  for row in read_metrics(path):
    for key, points in curves.items():
      if row.get(key) is not None:
        points.append((row['step'], float(row[key])))
  return curves


def figure(workdirs: Sequence[str | os.PathLike], x: str = 'step', log_y: bool = False
           ) -> Figure:
  """The figure of train (solid) and eval (dashed) loss of each workdir; `x` is 'step' or
  'tokens'."""
  if not workdirs:
    raise PlotError('no workdirs given: pass at least one training workdir.')
  if x not in X_AXES:
    raise PlotError(f'x={x!r}: expected one of {X_AXES}.')
  runs = []
  for w in workdirs:  # read everything first: a bad workdir fails before any drawing
    scale = tokens_per_step(w) if x == 'tokens' else 1
    runs.append((w, load_curves(w), scale))
  fig = Figure(figsize=(8, 5), layout='tight')
  ax = fig.subplots()
  colors = rcParams['axes.prop_cycle'].by_key()['color']
  for i, ((_, curves, scale), name) in enumerate(zip(runs, _labels(workdirs), strict=True)):
    color = colors[i % len(colors)]
    for key, style in (('train/loss', {'linestyle': '-'}),
                       ('eval/loss', {'linestyle': '--', 'marker': 'o', 'markersize': 4})):
      points = curves[key]
      if points:
        ax.plot([s * scale for s, _ in points], [v for _, v in points], color=color,
                label=f'{name} {key.split("/")[0]}', **style)
  ax.set_xlabel('tokens' if x == 'tokens' else 'step')
  ax.set_ylabel('loss (nats/token)')
  if log_y:
    ax.set_yscale('log')
    plain = matplotlib.ticker.FormatStrFormatter('%g')  # 3, not 3x10^0
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
  ax.grid(True, alpha=0.3)
  if ax.lines:
    ax.legend(fontsize='small')
  return fig


def plot_runs(workdirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
              x: str = 'step', log_y: bool = False) -> Path:
  """Writes `figure(workdirs, x, log_y)` to `out` (default <first workdir>/loss.png)."""
  fig = figure(workdirs, x, log_y)
  out_path = Path(out) if out else Path(workdir_lib.name(workdirs[0])) / DEFAULT_OUT
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=120)
  return out_path


def _labels(workdirs: Sequence[str | os.PathLike]) -> list[str]:
  """Each workdir's base name, or its full path where two base names clash."""
  base = [Path(w).resolve().name or str(w) for w in workdirs]
  return [b if base.count(b) == 1 else str(w) for b, w in zip(base, workdirs, strict=True)]
