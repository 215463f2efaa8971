"""Dense vs learned-routing MoE vs domain-routed MoE on three real domains, at equal active
parameters and equal tokens.

  PYTHONPATH=. python experiments/moe_domains/run.py [--steps=600] [--out=experiments/moe_domains]

Domains (all offline): Python stdlib code with docstrings/comments removed ('code'), those
docstrings/comments ('prose'), and a user-supplied text (default: tinyshakespeare). The
three models share everything but the feed-forward block of each layer:
  dense    one SwiGLU MLP of hidden size F
  learned  3 experts of hidden size F, learned top-1 routing (capacity factor 1.25)
  domain   3 experts of hidden size F, each domain owns one (DEMix-style), no router
so a token passes through one F-sized MLP in each (the learned router adds width x 3
parameters per layer). Writes results.md (per-domain validation loss, tokens/s) and
loss.png / domains.png next to this script; the run workdirs go to --workdir_root.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

VARIANTS = {
    'dense': {},
    'learned': {'num_experts': 3, 'top_k': 1, 'routing': 'learned', 'capacity_factor': 1.25},
    'domain': {'num_experts': 3, 'routing': 'domain', 'num_domains': 3},
}


def make_config(args, variant: str):
  from configs.default import get_config
  c = get_config()
  c.seed = args.seed
  c.data.mixture = (('code', 'stdlib:code', 1.0), ('prose', 'stdlib:prose', 1.0),
                    ('shakespeare', args.text, 1.0))
  c.data.max_docs = args.max_docs
  c.data.tokenizer.kind = 'byte'
  c.data.seq_len = args.seq_len
  c.data.val_fraction = 0.05
  m = c.model
  m.num_layers, m.width, m.num_heads, m.num_kv_heads, m.mlp_dim = 2, args.width, 4, 2, args.mlp_dim
  m.moe.update(VARIANTS[variant])
  t = c.train
  t.steps, t.batch_size, t.steps_per_dispatch = args.steps, args.batch_size, 10
  t.log_every, t.eval_every, t.eval_batches, t.sample_tokens = 10, args.steps // 6, 8, 0
  c.optimizer.warmup_steps = min(50, args.steps // 10)
  c.checkpoint.every = args.steps
  return c


def run_all(args) -> dict:
  from lm.model import ModelConfig
  from lm.train import train
  from lm.train.metrics import read_metrics
  results = {}
  for variant in VARIANTS:
    workdir = pathlib.Path(args.workdir_root) / variant
    config = make_config(args, variant)
    start = time.perf_counter()
    final = train(config, str(workdir))
    wall = time.perf_counter() - start
    rows = read_metrics(workdir / 'metrics.jsonl')
    rates = [r['train/tokens_per_sec'] for r in rows[1:] if 'train/tokens_per_sec' in r]
    vocab = json.loads((workdir / 'config.json').read_text())['model']['vocab_size']
    model_cfg = ModelConfig.from_config(config.model, vocab_size=vocab,
                                        seq_len=config.data.seq_len)
    results[variant] = {
        'final': {k: v for k, v in final.items() if isinstance(v, float)},
        'tokens_per_sec': statistics.median(rates) if rates else float('nan'),
        'wall_s': wall, 'params': model_cfg.param_count(),
        'active_params': model_cfg.active_param_count(), 'workdir': str(workdir)}
  return results


def write_results(args, results: dict, command: str) -> None:
  from lm.tools.plot import plot_runs
  from lm.train.metrics import read_metrics
  out = pathlib.Path(args.out)
  domains = ['code', 'prose', 'shakespeare']
  lines = [
      '# Dense vs learned MoE vs domain MoE (equal active parameters, equal tokens)', '',
      f'Command: `{command}`', '',
      f'Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs; '
      'tokens/s are indicative only), one XLA device.', '',
      f'Budget: {args.steps} steps x {args.batch_size} rows x {args.seq_len} tokens = '
      f'{args.steps * args.batch_size * args.seq_len:,} training tokens per model; 2 layers, '
      f'width {args.width}, expert/MLP hidden size {args.mlp_dim}; byte tokenizer; stdlib '
      f'limited to its first {args.max_docs} files. Validation: {8} batches, an equal share '
      'per domain. Loss in nats/token (= nats/byte here).', '',
      '| model | params (active) | ' + ' | '.join(f'val loss {d}' for d in domains)
      + ' | val loss all | dropped | tokens/s |',
      '|---|---|' + '---|' * (len(domains) + 3)]
  for variant, r in results.items():
    f = r['final']
    dropped = [v for k, v in f.items() if k.endswith('dropped_fraction')]
    lines.append(
        f'| {variant} | {r["params"]:,} ({r["active_params"]:,}) | '
        + ' | '.join(f'{f.get(f"eval/{d}/loss", float("nan")):.4f}' for d in domains)
        + f' | {f["eval/loss"]:.4f} | '
        + (f'{statistics.mean(dropped):.3f}' if dropped else '-')
        + f' | {r["tokens_per_sec"]:,.0f} |')
  lines += ['', 'Plots: `loss.png` (train and validation loss of the three runs), '
            '`domains.png` (validation loss per domain).', '']
  (out / 'results.md').write_text('\n'.join(lines), encoding='utf-8')
  (out / 'results.json').write_text(json.dumps(results, indent=1), encoding='utf-8')
  plot_runs([r['workdir'] for r in results.values()], out / 'loss.png')

  import matplotlib
  matplotlib.use('Agg', force=True)
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(domains), figsize=(12, 4), sharey=False)
  try:
    for ax, d in zip(axes, domains, strict=True):
      for variant, r in results.items():
        rows = [row for row in read_metrics(pathlib.Path(r['workdir']) / 'metrics.jsonl')
                if f'eval/{d}/loss' in row]
        ax.plot([row['step'] for row in rows], [row[f'eval/{d}/loss'] for row in rows],
                marker='o', markersize=3, label=variant)
      ax.set_title(f'validation loss: {d}')
      ax.set_xlabel('step')
      ax.grid(True, alpha=0.3)
    axes[0].set_ylabel('loss (nats/token)')
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / 'domains.png', dpi=110)
  finally:
    plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=600, help='training steps per model')
  p.add_argument('--batch_size', type=int, default=16, help='rows per step')
  p.add_argument('--seq_len', type=int, default=64, help='tokens per row')
  p.add_argument('--width', type=int, default=64, help='model width')
  p.add_argument('--mlp_dim', type=int, default=128, help='dense MLP / each expert hidden size')
  p.add_argument('--max_docs', type=int, default=400, help='stdlib files read (0: all)')
  p.add_argument('--seed', type=int, default=0, help='seed of every run')
  p.add_argument('--text', default='/work/shared/data/tinyshakespeare.txt',
                 help='the third domain: a local text file')
  p.add_argument('--out', default=str(HERE), help='where results.md and the plots go')
  p.add_argument('--workdir_root', default='/tmp/moe_domains_runs',
                 help='where the three training workdirs go (replaced)')
  args = p.parse_args()
  if not os.path.isfile(args.text):
    p.error(f'--text {args.text} does not exist; give a local text file as the third domain')
  import shutil
  shutil.rmtree(args.workdir_root, ignore_errors=True)
  command = 'PYTHONPATH=. python experiments/moe_domains/run.py ' + ' '.join(sys.argv[1:])
  results = run_all(args)
  write_results(args, results, command.strip())
  print((pathlib.Path(args.out) / 'results.md').read_text())


if __name__ == '__main__':
  main()
