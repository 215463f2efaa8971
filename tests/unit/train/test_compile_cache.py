"""lm.runtime's persistent compilation cache: a second identical run compiles nothing and
trains to the same losses."""

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache
from tiny_run import tiny_config

from lm import runtime
from lm.train import Trainer
from lm.train.metrics import read_metrics

OPTIONS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture
def cache_dir(tmp_path):
  saved = {name: getattr(jax.config, name) for name in OPTIONS}
  jax.config.update('jax_compilation_cache_dir', None)
  path = str(tmp_path / 'xla')
  assert runtime.use_compilation_cache(path)
  assert not runtime.use_compilation_cache(str(tmp_path / 'other'))  # the first choice wins
  yield path
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def test_auto_puts_the_cache_under_the_data_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('LM_CACHE', str(tmp_path))
  assert runtime.compilation_cache_path('auto') == str(tmp_path / 'xla')
  assert runtime.compilation_cache_path('auto', str(tmp_path / 'd')) == str(tmp_path / 'd' / 'xla')
  assert runtime.compilation_cache_path('') == ''


def test_a_second_identical_run_compiles_nothing_and_gives_the_same_losses(cache_dir, tmp_path):
  config = tiny_config(tmp_path)
  first = Trainer(config, str(tmp_path / 'a'), log=lambda _: None).run()
  second = Trainer(config, str(tmp_path / 'b'), log=lambda _: None).run()
  assert first['time/compiled_programs'] > 0
  assert second['time/compiled_programs'] == 0, second  # every program from the cache
  # Programs jit still holds in memory from the first run are neither compiled nor read back.
  assert second['time/cache_hits'] > 0
  rows_a = read_metrics(tmp_path / 'a' / 'metrics.jsonl')
  rows_b = read_metrics(tmp_path / 'b' / 'metrics.jsonl')
  for key in ('train/loss', 'train/grad_norm', 'eval/loss'):
    assert [r.get(key) for r in rows_a] == [r.get(key) for r in rows_b], key  # bit for bit
  assert first['sample'] == second['sample']
