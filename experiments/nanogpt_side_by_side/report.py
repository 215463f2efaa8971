"""The side-by-side table of run.sh (README.md): reads OUT/<run>.time (wall, user, sys s of
the whole command), OUT/nanogpt.log (nanoGPT's last evaluation), OUT/<run>/metrics.jsonl
(our runs' eval losses and time breakdown) and OUT/uptime_*.txt; writes OUT/table.md.

  python experiments/nanogpt_side_by_side/report.py OUT
"""

import json
import pathlib
import re
import sys

OURS = {'cold': '`configs/shakespeare_char.py`, cold caches',
        'warm': '`configs/shakespeare_char.py`, warm compilation cache',
        'speedrun': '`configs/shakespeare_speedrun.py` (to val loss <= 1.88), its programs '
                    'compiled',
        'speedrun_warm': '`configs/shakespeare_speedrun.py` again, warm compilation cache'}


def _times(out: pathlib.Path, name: str) -> tuple[float, float, float]:
  wall, user, sys_s = (float(x) for x in (out / f'{name}.time').read_text().split()[-3:])
  return wall, user, sys_s


def _nanogpt_val(out: pathlib.Path) -> tuple[int, float]:
  evals = re.findall(r'step (\d+): train loss [\d.]+, val loss ([\d.]+)',
                     (out / 'nanogpt.log').read_text())
  if not evals:
    raise SystemExit(f'{out / "nanogpt.log"}: no "step N: ... val loss" line; did nanoGPT run?')
  step, val = evals[-1]
  return int(step), float(val)


def _ours(workdir: pathlib.Path) -> dict:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in rows if 'eval/loss' in r]
  last = {k: v for r in rows for k, v in r.items()}  # the breakdown is on the last row
  return {'step': evals[-1]['step'], 'val': evals[-1]['eval/loss'],
          'to_target': last.get('time/to_target_s'),
          'breakdown': {k[5:-2]: v for k, v in last.items()
                        if k.startswith('time/') and k.endswith('_s') and k != 'time/wall_s'}}


def table(out: pathlib.Path) -> str:
  n_wall, n_user, n_sys = _times(out, 'nanogpt')
  n_step, n_val = _nanogpt_val(out)
  load = [(out / f'uptime_{w}.txt').read_text().strip() for w in ('start', 'end')]
  lines = [f'Load at start: `{load[0]}`', '', f'Load at end: `{load[1]}`', '',
           '| run | whole command, wall (s) | CPU user+sys (s) | val loss (step) | '
           'nanoGPT wall / this wall | time/to_target_s |', '|---|---|---|---|---|---|',
           f'| nanoGPT (PyTorch eager, 2000 iters) | {n_wall:.1f} | {n_user + n_sys:.1f} | '
           f'{n_val:.4f} ({n_step}) | 1.00x | |']
  parts = []
  for name, label in OURS.items():
    if not (out / f'{name}.time').exists():
      lines.append(f'| {label} | not run | | | | |')
      continue
    wall, user, sys_s = _times(out, name)
    r = _ours(out / name)
    to_target = '' if r['to_target'] is None else f"{r['to_target']:.1f}"
    ratio = (f'{n_wall / r["to_target"]:.2f}x (to target)' if r['to_target'] is not None
             else f'{n_wall / wall:.2f}x')
    lines.append(f'| {label} | {wall:.1f} | {user + sys_s:.1f} | {r["val"]:.4f} '
                 f'({r["step"]}) | {ratio} | {to_target} |')
    parts.append((name, r['breakdown']))
  if parts:
    keys = list(parts[0][1])
    lines += ['', 'Our runs\' time breakdown (s, `time/*_s` of metrics.jsonl):', '',
              '| run | ' + ' | '.join(keys) + ' |', '|---|' + '---|' * len(keys)]
    lines += [f'| {name} | ' + ' | '.join(f'{b.get(k, 0):.1f}' for k in keys) + ' |'
              for name, b in parts]
  return '\n'.join(lines) + '\n'


def main(out: pathlib.Path) -> None:
  text = table(out)
  (out / 'table.md').write_text(text)
  print(text)


if __name__ == '__main__':
  main(pathlib.Path(sys.argv[1]))
