"""Table and plot of the prune -> retrain experiment (run.sh writes what this reads).

  python experiments/prune_distill/report.py OUT

reads OUT/<run>.quantize.json (float and int8 scores of each model on the same validation
rows), OUT/<run>/metrics.jsonl (the eval curves) and OUT/pruned/prune.json, and writes
table.md and plot.png next to this file.
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).parent
ARMS = {'distill': 'pruned + distilled from the teacher',
        'finetune': 'pruned + fine-tuned (no teacher)',
        'scratch': 'same size, from scratch'}


def _curve(workdir: pathlib.Path, tokens_per_step: int):
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  points = [(r['step'] * tokens_per_step, r['eval/loss']) for r in rows if 'eval/loss' in r]
  return points


def main(out: pathlib.Path) -> None:
  scores = {p.name.split('.')[0]: json.loads(p.read_text())
            for p in out.glob('*.quantize.json')}
  prune = json.loads((out / 'pruned' / 'prune.json').read_text())
  teacher_cfg = json.loads((out / 'teacher' / 'config.json').read_text())
  tokens_per_step = teacher_cfg['train']['batch_size'] * teacher_cfg['data']['seq_len']
  steps = {name: scores[name]['step'] for name in scores}
  lines = [
      f'Pruned {prune["original"]} -> {prune["pruned"]}: {prune["params_before"]:,} -> '
      f'{prune["params_after"]:,} parameters '
      f'({prune["params_after"] / prune["params_before"]:.1%}).', '',
      '| model | params | training tokens | val loss | bits/byte | int8 val loss | '
      'int8 bits/byte |', '|---|---|---|---|---|---|---|']
  rows = [('teacher', 'teacher (default model), the ceiling', prune['params_before']),
          ('pruned', 'pruned, before any training', prune['params_after'])]
  rows += [(k, v, prune['params_after']) for k, v in ARMS.items()]
  best = min((k for k in ARMS if k in scores), key=lambda k: scores[k]['float']['eval/loss'],
             default=None)
  for key, label, params in rows:
    if key not in scores:
      lines.append(f'| {label} | {params:,} | - | not run | | | |')
      continue
    f, q = scores[key]['float'], scores[key]['int8']
    mark = ' (best)' if key == best else ''
    lines.append(f'| {label}{mark} | {params:,} | {steps[key] * tokens_per_step:,} | '
                 f'{f["eval/loss"]:.4f} | {f["eval/bits_per_byte"]:.4f} | '
                 f'{q["eval/loss"]:.4f} | {q["eval/bits_per_byte"]:.4f} |')
  (HERE / 'table.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for key, label in ARMS.items():
    if (out / key / 'metrics.jsonl').exists():
      x, y = zip(*_curve(out / key, tokens_per_step), strict=True)
      ax.plot(x, y, marker='o', label=label)
  if 'teacher' in scores:
    ax.axhline(scores['teacher']['float']['eval/loss'], color='k', ls='--',
               label=f'teacher ({prune["params_before"]:,} params)')
  if 'pruned' in scores:
    ax.scatter([0], [scores['pruned']['float']['eval/loss']], color='r', zorder=3,
               label='pruned, untrained')
  ax.set_xlabel('training tokens (student)')
  ax.set_ylabel('validation loss (nats/token)')
  ax.set_ylim(top=min(ax.get_ylim()[1], 6.0))
  ax.set_title(f'{prune["params_after"]:,}-parameter students of the default model')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(HERE / 'plot.png', dpi=120)


if __name__ == '__main__':
  main(pathlib.Path(sys.argv[1]))
