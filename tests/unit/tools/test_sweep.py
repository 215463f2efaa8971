"""`python -m lm.sweep`: the grid syntax, and a real 2 x 1 sweep of tiny runs with its table."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm.tools import sweep

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
TINY = [
    '--config.data.source=text', '--config.data.split=tail', '--config.data.val_fraction=0.2',
    '--config.data.tokenizer.kind=char', '--config.data.seq_len=16',
    '--config.model.num_layers=1', '--config.model.num_heads=2',
    '--config.model.num_kv_heads=2', '--config.model.mlp_dim=64',
    '--config.optimizer.warmup_steps=2',
    '--config.train.steps=10', '--config.train.batch_size=4',
    '--config.train.steps_per_dispatch=5', '--config.train.log_every=5',
    '--config.train.eval_every=5', '--config.train.eval_batches=1',
    '--config.train.sample_tokens=0', '--config.checkpoint.every=10',
]


def test_parse_sweep_lists_scalars_strings_and_tuples():
  axes = sweep.parse_sweep("optimizer.lr=[1e-3, 3e-3]; model.mlp=[gelu,'swiglu'];"
                           'train.steps=7; optimizer.weight_decay_exclude=[("norm",), ()]')
  assert axes == [('optimizer.lr', [1e-3, 3e-3]), ('model.mlp', ['gelu', 'swiglu']),
                  ('train.steps', [7]), ('optimizer.weight_decay_exclude', [('norm',), ()])]
  points = sweep.grid(axes)
  assert len(points) == 2 * 2 * 1 * 2
  assert points[1] == {'optimizer.lr': 1e-3, 'model.mlp': 'gelu', 'train.steps': 7,
                       'optimizer.weight_decay_exclude': ()}  # the last key varies fastest
  assert sweep.run_name(points[0]) == 'lr=0.001,mlp=gelu,steps=7,weight_decay_exclude=norm'


@pytest.mark.parametrize('spec, fragment', [
    ('', 'empty'),
    ('optimizer.lr', r'KEY=\[v1,v2'),
    ('optimizer.lr=[1e-3', 'not closed'),
    ('optimizer.lr=[]', 'empty list'),
    ('optimizer.lr=[1];optimizer.lr=[2]', 'twice'),
    ('model.mlp=[a b]', 'not a Python literal'),
])
def test_bad_sweep_specs_are_named(spec, fragment):
  with pytest.raises(sweep.SweepError, match=fragment):
    sweep.parse_sweep(spec)


def test_points_are_checked_against_the_config_before_anything_runs(tmp_path):
  from lm import api
  config = api.load_config('default')
  with pytest.raises(sweep.SweepError, match=r'optimizer\.lrr: no such config key'):
    sweep.sweep('configs/default.py', config, tmp_path / 's', 'optimizer.lrr=[1e-3]',
                launcher='local')
  with pytest.raises(sweep.SweepError, match=r"model\.width='wide'"):
    sweep.sweep('configs/default.py', config, tmp_path / 's', 'model.width=["wide"]',
                launcher='local')
  assert not (tmp_path / 's').exists()  # nothing was created or run


def test_override_args_round_trip_through_ml_collections_syntax():
  assert sweep.override_arg('optimizer.lr', 0.003) == '--config.optimizer.lr=0.003'
  assert sweep.override_arg('model.mlp', 'gelu') == '--config.model.mlp=gelu'
  assert sweep.override_arg('model.tie_embeddings', True) == '--config.model.tie_embeddings=true'
  assert (sweep.override_arg('optimizer.weight_decay_exclude', ('norm',))
          == "--config.optimizer.weight_decay_exclude=('norm',)")


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """A real 2 x 1 sweep (learning rate x width) of 10-step runs through the CLI."""
  root = tmp_path_factory.mktemp('sweep')
  corpus = root / 'story.txt'
  corpus.write_text('The fox counted the boats by the old bridge every morning. ' * 60)
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # each run: one CPU device
  env['JAX_PLATFORMS'] = 'cpu'
  env['LM_CACHE'] = str(root / 'cache')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')]))
  out = root / 'runs'
  cmd = [sys.executable, '-m', 'lm.sweep', f'--workdir={out}',
         '--sweep=optimizer.lr=[1e-3,1e-2];model.width=[32]', *TINY,
         f'--config.data.path={corpus}']
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
  return {'out': out, 'result': result, 'cmd': cmd, 'env': env}


def test_a_two_point_sweep_writes_a_table_with_finite_losses(swept):
  result, out = swept['result'], swept['out']
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['run'] for r in rows] == ['lr=0.001,width=32', 'lr=0.01,width=32']
  for r in rows:
    assert r['status'] == 'done'
    assert int(r['step']) == 10
    for key in ('final_eval_loss', 'best_eval_loss', 'tokens_per_sec'):
      assert math.isfinite(float(r[key])) and float(r[key]) > 0
    assert float(r['best_eval_loss']) <= float(r['final_eval_loss'])
    assert int(r['parameters']) > 0
  # Ten steps at lr 1e-2 learn more than at 1e-3: the table reports each run's own numbers.
  assert float(rows[1]['final_eval_loss']) < float(rows[0]['final_eval_loss'])
  md = (out / 'results.md').read_text()
  assert md.count('| lr=') == 0 and md.count('\n| 0.0') == 2  # one row per run
  assert '**' in md  # the best final eval loss is marked
  png = out / 'loss.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 5000


def test_rerunning_a_finished_sweep_trains_nothing_again(swept):
  before = {p: p.stat().st_mtime_ns for p in swept['out'].glob('*/metrics.jsonl')}
  result = subprocess.run(swept['cmd'], cwd=REPO, env=swept['env'], capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count('already finished') == 2
  assert {p: p.stat().st_mtime_ns for p in before} == before


def test_slurm_launcher_submits_one_job_per_point_and_collects_later(tmp_path, monkeypatch):
  """sbatch here is a stand-in recording its arguments (the scheduler is not under test)."""
  from lm import api
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'sbatch.log'
  (bin_dir / 'sbatch').write_text(f'#!/bin/sh\necho "$@" >> {log}\necho Submitted batch job 7\n')
  (bin_dir / 'sbatch').chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  config = api.load_config('default')
  rows = sweep.sweep('configs/default.py', config, tmp_path / 's', 'optimizer.lr=[1e-3,3e-3]',
                     ['--config.train.steps=5'], launcher='slurm', log=lambda _: None)
  assert rows == []
  jobs = log.read_text().splitlines()
  assert len(jobs) == 2 and all(str(sweep.SLURM_SCRIPT) in j for j in jobs)
  assert '--config.train.steps=5 --config.optimizer.lr=0.003' in jobs[1]
  assert f'--workdir={tmp_path / "s" / "lr=0.003"}' in jobs[1]
  rows = sweep.sweep('configs/default.py', config, tmp_path / 's', 'optimizer.lr=[1e-3,3e-3]',
                     ['--config.train.steps=5'], launcher='none', log=lambda _: None)
  assert [r['status'] for r in rows] == ['not run', 'not run']  # the jobs have not run here
  assert (tmp_path / 's' / 'results.md').is_file()
