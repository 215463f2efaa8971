"""lm.train.metrics: metrics.jsonl lines, resume truncation, TensorBoard events, the bar."""

import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lm.train import metrics as metrics_lib
from lm.train.metrics import MetricsWriter


def _lines(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _tb_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Reads every scalar from the TFRecord event files under <workdir>/tb."""
  out: dict[str, list[tuple[int, float]]] = {}
  files = sorted((workdir / 'tb').glob('events.out.tfevents.*'))
  assert files, 'no TensorBoard event file written'
  for path in files:
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_jsonl_lines_and_tensorboard(tmp_path):
  with MetricsWriter(tmp_path, total_steps=30) as w:
    w.write(10, {'train/loss': np.float32(2.5), 'train/lr': 1e-3})
    w.write(20, {'train/loss': jnp.array(2.0), 'train/grad_norm': 0.75})
    w.write(30, {'eval/loss': 1.5, 'eval/perplexity': math.exp(1.5), 'train/loss': float('nan')})
  rows = _lines(tmp_path)
  assert rows == [
      {'step': 10, 'train/loss': 2.5, 'train/lr': 1e-3},
      {'step': 20, 'train/loss': 2.0, 'train/grad_norm': 0.75},
      {'step': 30, 'eval/loss': 1.5, 'eval/perplexity': pytest.approx(math.exp(1.5)),
       'train/loss': None},  # NaN is written as null: the file stays strict JSON
  ]
  scalars = _tb_scalars(tmp_path)
  assert scalars['train/loss'][:2] == [(10, 2.5), (20, 2.0)]
  assert math.isnan(scalars['train/loss'][2][1])
  assert scalars['eval/loss'] == [(30, 1.5)]


def test_resume_drops_lines_after_start_step(tmp_path):
  w = MetricsWriter(tmp_path, total_steps=100, tensorboard=False)
  for step in (10, 20, 30, 40, 50):
    w.write(step, {'train/loss': 10.0 - step / 10})
  assert len(_lines(tmp_path)) == 5  # on disk before close: a crash keeps what was written
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 60, "train/lo')  # the interrupted run died mid-line

  with MetricsWriter(tmp_path, total_steps=100, start_step=30, tensorboard=False) as w:
    w.write(40, {'train/loss': 0.5})
  rows = _lines(tmp_path)
  assert [r['step'] for r in rows] == [10, 20, 30, 40]
  assert rows[-1]['train/loss'] == 0.5
  assert metrics_lib.read_metrics(tmp_path / 'metrics.jsonl') == rows


def test_fresh_start_in_old_workdir_starts_a_new_file(tmp_path):
  with MetricsWriter(tmp_path, total_steps=10, tensorboard=False) as w:
    w.write(0, {'eval/loss': 0.7})  # DPO's step-0 evaluation, then a step before any save
    w.write(5, {'train/loss': 1.0})
  with MetricsWriter(tmp_path, total_steps=10, start_step=0, tensorboard=False) as w:
    w.write(0, {'eval/loss': 0.7})  # the restarted run evaluates step 0 again
    w.write(1, {'train/loss': 2.0})
  assert [r['step'] for r in _lines(tmp_path)] == [0, 1]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with MetricsWriter(tmp_path / 'p1', total_steps=10) as w:
    w.write(1, {'train/loss': 1.0})
    w.progress(1, loss=1.0, tokens_per_sec=1.0)
    w.log('hello')
  assert not (tmp_path / 'p1').exists()
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  with MetricsWriter(tmp_path / 'off', total_steps=10, enabled=False) as w:
    w.write(1, {'train/loss': 1.0})
  assert not (tmp_path / 'off').exists()


def test_progress_bar_and_log(tmp_path, capsys):
  with MetricsWriter(tmp_path, total_steps=20, start_step=10, tensorboard=False) as w:
    w.log('resumed from step 10')
    w.progress(15, loss=2.345678, tokens_per_sec=12_345.0)
    w.progress(20, loss=1.234567, tokens_per_sec=23_456.0)
  err = capsys.readouterr().err
  assert 'resumed from step 10' in err
  assert '20/20' in err and '1.2346' in err and '23.5k' in err
  assert not (tmp_path / 'tb').exists()
