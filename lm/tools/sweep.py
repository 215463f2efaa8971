"""A grid of training runs and their results table (`python -m lm.sweep`, lm/cli/sweep.py).

Each point of the grid (the product of the lists; `;` separates keys, a value without
brackets is one point) trains in its own workdir, WORKDIR/<name>, as a separate
`python -m lm.main` process with the point's values as `--config.<key>=<value>` overrides
(after any `--config.*` overrides given to the sweep itself). A point whose workdir already
holds a finished run is not trained again, so a sweep that stopped resumes where it was.

At the end (or with --launcher=none, from the workdirs as they are) WORKDIR/results.md and
WORKDIR/results.csv hold, per run: the swept values, final and best eval loss, median
tokens/s, parameters and status; WORKDIR/loss.png has every run's curves (lm.plot).
--launcher=slurm submits each point as its own job (`sbatch launch/slurm.sbatch ...`);
--launcher=commands prints one lm.main command per point instead of running anything, for
any other scheduler; --launcher=none collects the table once the jobs are done.
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lm import workdir as workdir_lib
from lm.config import ConfigDict, override
from lm.errors import ConfigError, UserError
from lm.tools.plot import plot_runs
from lm.train.metrics import read_metrics

RESULTS_MD = 'results.md'
RESULTS_CSV = 'results.csv'
PLOT_FILE = 'loss.png'
LAUNCHERS = ('local', 'slurm', 'commands', 'none')
SLURM_SCRIPT = Path(__file__).resolve().parent.parent / 'launch' / 'slurm.sbatch'


class SweepError(UserError):
  """A sweep spec or workdir the sweep cannot use; the message names it and the fix."""


# ---- the grid -------------------------------------------------------------------------------


def parse_sweep(spec: str) -> list[tuple[str, list[Any]]]:
  """'a.b=[1,2];c=x' -> [('a.b', [1, 2]), ('c', ['x'])]; values are Python literals (bare
  words are strings)."""
  axes: list[tuple[str, list[Any]]] = []
  for part in (p.strip() for p in spec.split(';')):
    if not part:
      continue
    key, eq, raw = part.partition('=')
    key, raw = key.strip(), raw.strip()
    if not eq or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', key) or not raw:
      raise SweepError(f'--sweep part {part!r}: expected KEY=[v1,v2,...] or KEY=value with a '
                       'dotted config key, e.g. optimizer.lr=[1e-3,3e-3].')
    if raw.startswith('['):
      if not raw.endswith(']'):
        raise SweepError(f'--sweep part {part!r}: the list for {key} is not closed with ].')
      values = [_literal(v, key) for v in _split_list(raw[1:-1])]
    else:
      values = [_literal(raw, key)]
    if not values:
      raise SweepError(f'--sweep: {key} has an empty list; give at least one value.')
    if any(k == key for k, _ in axes):
      raise SweepError(f'--sweep names {key} twice; give all its values in one list.')
    axes.append((key, values))
  if not axes:
    raise SweepError('--sweep is empty; e.g. --sweep="optimizer.lr=[1e-3,3e-3]".')
  return axes


def _split_list(body: str) -> list[str]:
  """Splits on commas outside brackets/parentheses/quotes (values may be tuples)."""
  parts, depth, quote, cur = [], 0, '', ''
  for ch in body:
    if quote:
      quote = '' if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      parts.append(cur)
      cur = ''
      continue
    cur += ch
  parts.append(cur)
  return [p.strip() for p in parts if p.strip()]


def _literal(raw: str, key: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    if re.fullmatch(r'[\w.\-/+]+', raw):
      return raw  # a bare word: a string value (e.g. model.mlp=[gelu,swiglu])
    raise SweepError(f'--sweep value {raw!r} for {key} is not a Python literal; quote strings, '
                     'e.g. model.mlp=["gelu","swiglu"].') from None


def grid(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
  """Every combination, the last key varying fastest."""
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo, strict=True))
          for combo in itertools.product(*(vs for _, vs in axes))]


def run_name(point: dict[str, Any]) -> str:
  """A workdir name from the swept values: 'lr=0.001,width=128' (leaf key names, or the full
  dotted key where two leaves clash)."""
  leaves = [k.rsplit('.', 1)[-1] for k in point]
  parts = []
  for (key, value), leaf in zip(point.items(), leaves, strict=True):
    name = leaf if leaves.count(leaf) == 1 else key
    parts.append(f'{name}={_format_value(value)}')
  return re.sub(r'[^\w.=,+\-]', '_', ','.join(parts))


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, tuple | list):
    return '+'.join(_format_value(v) for v in value)
  return str(value)


def override_arg(key: str, value: Any) -> str:
  """`--config.key=value` in the syntax ml_collections' config flags parse."""
  if isinstance(value, bool):
    text = 'true' if value else 'false'
  elif isinstance(value, str):
    text = value
  else:
    text = repr(value)
  return f'--config.{key}={text}'


def check_points(config, points: Sequence[dict[str, Any]]) -> None:
  """Every grid point's values apply to the base config: each key exists and each value has
  the key's type (before anything runs; other problems surface in that run's own check)."""
  problems = []
  for point in points:
    try:
      override(ConfigDict(config.to_dict()), point)
    except ConfigError as e:
      problems += [p for p in e.problems if p not in problems]
  if problems:
    raise SweepError('--sweep: ' + '; '.join(problems))


# ---- running ----------------------------------------------------------------------------


def command(config_path: str, workdir: Path, base_overrides: Sequence[str],
            point: dict[str, Any]) -> list[str]:
  """The lm.main command that trains one point of the grid."""
  return ([sys.executable, '-m', 'lm.main', f'--config={config_path}', f'--workdir={workdir}',
           *base_overrides] + [override_arg(k, v) for k, v in point.items()])


def finished(workdir: Path, steps: int) -> bool:
  """Whether `workdir`'s metrics reached `steps`."""
  rows = _metrics(workdir)
  return bool(rows) and max(r.get('step', 0) for r in rows) >= steps


def run_all(cmds: Sequence[tuple[str, list[str], Path]], steps: int,
            log: Callable[[str], None] = print) -> dict[str, int]:
  """Runs each command in turn (skipping finished workdirs); returns name -> exit status."""
  status = {}
  for i, (name, cmd, workdir) in enumerate(cmds, 1):
    if finished(workdir, steps):
      log(f'[{i}/{len(cmds)}] {name}: already finished in {workdir}, skipped')
      status[name] = 0
      continue
    log(f'[{i}/{len(cmds)}] {name}: {shlex.join(cmd[1:])}')
    status[name] = subprocess.run(cmd, check=False).returncode
    if status[name]:
      log(f'[{i}/{len(cmds)}] {name}: failed with exit status {status[name]}; '
          'going on with the rest')
  return status


def submit_slurm(cmds: Sequence[tuple[str, list[str], Path]],
                 log: Callable[[str], None] = print) -> dict[str, int]:
  """One `sbatch launch/slurm.sbatch <lm.main flags>` job per point (unfinished ones);
  returns name -> sbatch's exit status."""
  status = {}
  for name, cmd, _ in cmds:
    job = ['sbatch', f'--job-name=lm-sweep-{name}', str(SLURM_SCRIPT), *cmd[3:]]
    try:
      done = subprocess.run(job, check=False, capture_output=True, text=True)
    except FileNotFoundError:
      raise SweepError('--launcher=slurm needs sbatch on PATH (run the sweep on a SLURM '
                       'login node), or use --launcher=commands.') from None
    status[name] = done.returncode
    log(f'{name}: {(done.stdout or done.stderr).strip()}')
  return status


# ---- results ----------------------------------------------------------------------------


def _metrics(workdir: Path) -> list[dict[str, Any]]:
  path = workdir_lib.metrics_path(workdir)
  return read_metrics(path) if path.exists() else []


def _finite(values: list[Any]) -> list[float]:
  return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def summarize_run(workdir: Path) -> dict[str, Any]:
  """Final and best eval loss, median tokens/s, last step and parameters of one workdir."""
  rows = _metrics(workdir)
  evals = [(r['step'], r['eval/loss']) for r in rows
           if isinstance(r.get('eval/loss'), int | float)]
  speeds = _finite([r.get('train/tokens_per_sec') for r in rows])
  return {
      'step': max((r.get('step', 0) for r in rows), default=0),
      'final_eval_loss': evals[-1][1] if evals else None,
      'best_eval_loss': min(v for _, v in evals) if evals else None,
      'tokens_per_sec': statistics.median(speeds) if speeds else None,
      'parameters': _parameters(workdir),
  }


def _parameters(workdir: Path) -> int | None:
  """The model's parameter count from the workdir's resolved config.json."""
  if not workdir_lib.has_config(workdir):
    return None
  from lm.model import ModelConfig  # jax: only for the table, not for checking the sweep
  try:
    cfg = workdir_lib.read_config(workdir)
    return ModelConfig.from_config(cfg.model, seq_len=cfg.data.seq_len).param_count()
  except (UserError, ValueError, KeyError, TypeError):
    return None


def results_table(sweep_dir: Path, points: Sequence[dict[str, Any]], steps: int,
                  status: dict[str, int] | None = None) -> list[dict[str, Any]]:
  """One row per point: its values, run name, summary and status."""
  rows = []
  for point in points:
    name = run_name(point)
    summary = summarize_run(sweep_dir / name)
    if status is not None and status.get(name):
      state = f'failed ({status[name]})'
    elif summary['step'] >= steps:
      state = 'done'
    else:
      state = 'not run' if summary['step'] == 0 else f'stopped at {summary["step"]}'
    rows.append({**point, 'run': name, **summary, 'status': state})
  return rows


COLUMNS = (('final_eval_loss', 'final eval loss'), ('best_eval_loss', 'best eval loss'),
           ('tokens_per_sec', 'tokens/s'), ('parameters', 'parameters'), ('step', 'steps'),
           ('status', 'status'))


def _cell(value: Any, key: str) -> str:
  if value is None:
    return '-'
  if key == 'tokens_per_sec':
    return f'{value:,.0f}'
  if key == 'parameters':
    return f'{value:,}'
  if isinstance(value, float):
    return f'{value:.4f}' if key.endswith('loss') else f'{value:g}'
  return str(value)


def write_results(out_dir: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str],
                  header: str = '') -> tuple[Path, Path]:
  """results.md (best final eval loss in bold) and results.csv in `out_dir`."""
  finals = [r['final_eval_loss'] for r in rows if r['final_eval_loss'] is not None]
  best = min(finals) if finals else None
  lines = [header, ''] if header else []
  titles = [*keys, *(t for _, t in COLUMNS)]
  lines += ['| ' + ' | '.join(titles) + ' |', '|' + '---|' * len(titles)]
  for r in rows:
    cells = [_cell(r[k], k) for k in keys] + [_cell(r[k], k) for k, _ in COLUMNS]
    if best is not None and r['final_eval_loss'] == best:
      cells[len(keys)] = f'**{cells[len(keys)]}**'
    lines.append('| ' + ' | '.join(cells) + ' |')
  md = out_dir / RESULTS_MD
  md.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  buf = io.StringIO()
  fields = [*keys, 'run', *(k for k, _ in COLUMNS)]
  writer = csv.DictWriter(buf, fieldnames=fields, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ('' if r[k] is None else r[k]) for k in fields})
  csv_path = out_dir / RESULTS_CSV
  csv_path.write_text(buf.getvalue(), encoding='utf-8')
  return md, csv_path


def plot_results(sweep_dir: Path, rows: Sequence[dict[str, Any]], out_dir: Path) -> Path | None:
  """Every run with metrics on one figure (lm.tools.plot); None when no run has any."""
  workdirs = [sweep_dir / r['run'] for r in rows if _metrics(sweep_dir / r['run'])]
  return plot_runs(workdirs, out_dir / PLOT_FILE) if workdirs else None


def sweep(config_path: str, config, sweep_dir: str | os.PathLike, spec: str,
          base_overrides: Sequence[str] = (), launcher: str = 'local',
          log: Callable[[str], None] = print,
          results_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
  """Runs (or prints, or only collects) the grid; returns the results rows. The table and
  plot go to `results_dir` (default: `sweep_dir`)."""
  if launcher not in LAUNCHERS:
    raise SweepError(f'--launcher={launcher!r}: expected one of {", ".join(LAUNCHERS)}.')
  axes = parse_sweep(spec)
  keys = [k for k, _ in axes]
  points = grid(axes)
  check_points(config, points)
  sweep_dir = Path(sweep_dir)
  steps = _swept_or_base(points, config, 'train.steps')
  cmds = [(run_name(p), command(config_path, sweep_dir / run_name(p), base_overrides, p),
           sweep_dir / run_name(p)) for p in points]
  if launcher == 'commands':
    for _, cmd, _ in cmds:
      print(shlex.join(cmd))
    return []
  sweep_dir.mkdir(parents=True, exist_ok=True)
  (sweep_dir / 'sweep.json').write_text(json.dumps({
      'config': config_path, 'sweep': spec, 'overrides': list(base_overrides),
      'runs': [name for name, _, _ in cmds]}, indent=2) + '\n', encoding='utf-8')
  log(f'sweep: {len(points)} runs of {config_path} in {sweep_dir}')
  if launcher == 'slurm':
    todo = [c for c in cmds if not finished(c[2], steps)]
    failed = {n: s for n, s in submit_slurm(todo, log).items() if s}
    if failed:
      raise SweepError(f'sbatch failed for {", ".join(failed)}; see its messages above.')
    log(f'submitted {len(todo)} jobs; when they finish, collect the results with the same '
        'command and --launcher=none.')
    return []
  status = run_all(cmds, steps, log) if launcher == 'local' else None
  rows = results_table(sweep_dir, points, steps, status)
  header = (f'Sweep of `{config_path}` over `{spec}`' +
            (f' with `{" ".join(base_overrides)}`' if base_overrides else '') + '.')
  out = Path(results_dir) if results_dir else sweep_dir
  out.mkdir(parents=True, exist_ok=True)
  md, csv_path = write_results(out, rows, keys, header)
  plot = plot_results(sweep_dir, rows, out)
  log(md.read_text(encoding='utf-8'))
  log(f'wrote {md}, {csv_path}' + (f', {plot}' if plot else ''))
  return rows


def _swept_or_base(points: Sequence[dict[str, Any]], config, key: str) -> int:
  """The largest value of `key` over the grid, or the base config's (after overrides)."""
  values = [p[key] for p in points if key in p]
  node = config
  for part in key.split('.'):
    node = node[part]
  return max([node, *values])


def argv_overrides(args: Sequence[str]) -> list[str]:
  """The `--config.key=value` overrides among `args` (passed on to every run)."""
  return [a for a in args if a.startswith('--config.')]
