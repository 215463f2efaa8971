"""lm.train.timing: a run's time breakdown covers its wall time, phase by phase."""

import time

import pytest
from tiny_run import tiny_config
from train_fixtures import no_session_xla_cache  # noqa: F401

from lm.train import Trainer
from lm.train.metrics import read_metrics
from lm.train.timing import PHASES, Breakdown, CompileCounter


@pytest.mark.usefixtures('no_session_xla_cache')  # compiles are counted below
def test_the_parts_add_up_to_the_wall_time(tmp_path):
  config = tiny_config(tmp_path)
  config.train.profile_start_step, config.train.profile_steps = 5, 5  # the 2nd dispatch
  started = time.time()
  time.sleep(0.2)  # "imports": before the Trainer, counted as start-up from `started_at`
  final = Trainer(config, str(tmp_path / 'run'), log=lambda _: None, started_at=started).run()
  measured = time.time() - started
  wall = final['time/wall_s']
  assert abs(wall - measured) < 0.03 * measured, (wall, measured)  # the same clock span
  parts = {k: final[f'time/{k}_s'] for k in PHASES}
  assert all(v >= 0 for v in parts.values()), parts
  for k in ('startup', 'data', 'compile', 'train', 'eval', 'checkpoint', 'sample'):
    assert parts[k] > 0, (k, parts)
  assert parts['startup'] >= 0.2
  # What no phase covered is small, and no second was counted twice (it would go negative).
  assert -0.01 * wall <= final['time/other_s'] < 0.05 * wall, final
  assert final['time/compiled_programs'] > 0
  row = read_metrics(tmp_path / 'run' / 'metrics.jsonl')[-1]
  assert row['step'] == 10 and 'train/loss' in row and 'eval/loss' in row
  assert row['time/wall_s'] == wall
  # The profile option wrote a trace TensorBoard and Perfetto read.
  traces = list((tmp_path / 'run' / 'tb' / 'plugins' / 'profile').glob('*/*'))
  assert any(p.name.endswith('.xplane.pb') for p in traces), traces
  assert any(p.name == 'perfetto_trace.json.gz' for p in traces), traces


@pytest.mark.usefixtures('no_session_xla_cache')
def test_nested_phases_and_compilation_are_counted_once():
  import jax
  import jax.numpy as jnp
  b = Breakdown()
  with b.phase('train'):
    time.sleep(0.05)
    with b.phase('eval'):
      time.sleep(0.05)
      jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(jnp.ones(7)).block_until_ready()
  row = b.finish()
  assert 0.04 < row['time/train_s'] < 0.2 and 0.04 < row['time/eval_s'] < 0.2
  assert row['time/compile_s'] > 0 and row['time/compiled_programs'] >= 1
  assert abs(row['time/other_s']) < 0.02
  with CompileCounter() as counter:
    pass
  assert counter.compiled == 0
