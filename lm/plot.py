"""Loss curves of one or more runs: `python -m lm.plot WORKDIR [WORKDIR ...] [--out=PNG]`.

Train loss is drawn solid and eval loss dashed with markers, one colour per run, against
the step or the tokens seen (step * train.batch_size * data.seq_len from each workdir's
config.json). Headless: the figure is written to a PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from lm.train.metrics import METRICS_FILE, read_metrics

CONFIG_FILE = 'config.json'  # lm.train.loop.CONFIG_FILE (not imported: it pulls in the model)
X_AXES = ('step', 'tokens')
DEFAULT_OUT = 'loss.png'


class PlotError(ValueError):
  """A workdir or option the plot cannot use; the message names it and the fix."""


def tokens_per_step(workdir: str | os.PathLike) -> int:
  """train.batch_size * data.seq_len from `workdir`/config.json."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise PlotError(f'{path} not found: --x=tokens needs the config.json a training run '
                    'writes; use --x=step for this workdir.')
  try:
    cfg = json.loads(path.read_text(encoding='utf-8'))
    return int(cfg['train']['batch_size']) * int(cfg['data']['seq_len'])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise PlotError(f'{path} lacks train.batch_size or data.seq_len ({e!r}); was it written '
                    'by lm.train? Use --x=step instead.') from e


def load_curves(workdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """{'train/loss': [(step, loss), ...], 'eval/loss': [...]} of one workdir (nulls skipped)."""
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise PlotError(f'{path} not found: is {workdir} a training workdir (python -m lm.main '
                    '--workdir=...)? It has no metrics yet.')
  curves: dict[str, list[tuple[int, float]]] = {'train/loss': [], 'eval/loss': []}
  for row in read_metrics(path):
    for key, points in curves.items():
      if row.get(key) is not None:
        points.append((row['step'], float(row[key])))
  return curves


def plot_runs(workdirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
              x: str = 'step', log_y: bool = False) -> Path:
  """Draws train (solid) and eval (dashed) loss of each workdir on one figure; returns the PNG.

  `out` defaults to <first workdir>/loss.png; `x` is 'step' or 'tokens'.
  """
  if not workdirs:
    raise PlotError('no workdirs given: pass at least one training workdir.')
  if x not in X_AXES:
    raise PlotError(f'x={x!r}: expected one of {X_AXES}.')
  runs = []
  for w in workdirs:  # read everything first: a bad workdir fails before any drawing
    scale = tokens_per_step(w) if x == 'tokens' else 1
    runs.append((w, load_curves(w), scale))

  import matplotlib
  matplotlib.use('Agg', force=True)  # headless: no display needed
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  names = _labels(workdirs)
  fig, ax = plt.subplots(figsize=(8, 5))
  try:
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, ((_, curves, scale), name) in enumerate(zip(runs, names, strict=True)):
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
    out_path = Path(out) if out else Path(workdirs[0]) / DEFAULT_OUT
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
  finally:
    plt.close(fig)
  return out_path


def _labels(workdirs: Sequence[str | os.PathLike]) -> list[str]:
  """Each workdir's base name, or its full path where two base names clash."""
  base = [Path(w).resolve().name or str(w) for w in workdirs]
  return [b if base.count(b) == 1 else str(w) for b, w in zip(base, workdirs, strict=True)]


if __name__ == '__main__':  # flags exist only for the command line
  _OUT = flags.DEFINE_string('out', None, 'PNG file to write; default: <first workdir>/loss.png.')
  _X = flags.DEFINE_enum('x', 'step', list(X_AXES),
                         'x axis: optimizer step, or tokens seen (step * train.batch_size * '
                         'data.seq_len from each workdir\'s config.json).')
  _LOG_Y = flags.DEFINE_bool('log_y', False, 'Draw the loss on a logarithmic axis.')


def main(argv: list[str]) -> None:
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError('give one or more workdirs: python -m lm.plot WORKDIR [WORKDIR ...]')
  try:
    path = plot_runs(workdirs, _OUT.value, x=_X.value, log_y=_LOG_Y.value)
  except PlotError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
