"""What the tests that train tiny runs share (imported by test_*.py; tests/ is on sys.path):
a persistent XLA cache per module, so Trainers of one model compile their steps once, and
the tiny model and optimizer settings.

A module that imports `module_xla_cache` gets it (an autouse fixture found in its
namespace): `from train_fixtures import module_xla_cache  # noqa: F401`.
"""

import contextlib
import os
import pathlib

import jax
import ml_collections
import pytest
from jax.experimental.compilation_cache import compilation_cache

from lm import runtime

_CACHE_OPTIONS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
                  'jax_persistent_cache_min_entry_size_bytes')


@contextlib.contextmanager
def _xla_cache_settings(**settings):
  """jax's persistent-cache options set to `settings` inside, restored afterwards (the cache
  reset both times: an earlier compile may have settled "no cache")."""
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  for name, value in settings.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope='module', autouse=True)
def module_xla_cache(tmp_path_factory):
  """A persistent XLA cache for the importing module, every program stored; the previous
  settings restored afterwards. The session's shared cache (tests/conftest.py) serves
  instead where it is set."""
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  with _xla_cache_settings(jax_compilation_cache_dir=str(tmp_path_factory.mktemp('xla_cache')),
                           jax_persistent_cache_min_compile_time_secs=0,
                           jax_persistent_cache_min_entry_size_bytes=-1):
    yield


def tiny(c: ml_collections.ConfigDict, cache: pathlib.Path, *, seq_len: int, layers: int = 2,
         width: int = 32, eval_batches: int = 2) -> ml_collections.ConfigDict:
  """`c` made tiny: byte tokens, 2 heads, MLP 2 x width, lr 1e-2 (2 warmup steps), batch 8,
  5 steps per dispatch, no samples; the data cache in `cache`."""
  c.data.cache_dir = str(cache)
  c.data.val_fraction = 0.2
  c.data.seq_len = seq_len
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = layers, width, 2 * width
  c.model.num_heads = c.model.num_kv_heads = 2
  c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.min_lr = 1e-2, 2, 1e-3
  c.train.batch_size = 8
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.eval_batches = eval_batches
  c.train.sample_tokens = 0
  return c


def subprocess_xla_flags(devices: int | None = None) -> str:
  """This process's XLA_FLAGS for a subprocess: the suite's compile settings
  (tests/conftest.py; they halve a tiny model's compile time) kept, its fake-device count
  replaced by `devices` (dropped when None: one device)."""
  kept = [f for f in os.environ.get('XLA_FLAGS', '').split()
          if not f.startswith(f'{runtime.DEVICE_COUNT_FLAG}=')]
  return ' '.join(kept + ([] if devices is None else [f'{runtime.DEVICE_COUNT_FLAG}={devices}']))


@pytest.fixture
def optimized_xla():
  """Full LLVM optimization for one test that runs hundreds of steps, where the suite's
  level 0 (tests/conftest.py) costs more in running than it saves in compiling: a 240-step
  DPO run took 41 s of steps at level 0 and 16 s optimized, for 3 s more compile. Same
  programs and arithmetic (fast-math is off). Compiles inside the test see the flag (the
  persistent cache keys include it)."""
  saved = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', saved)


@pytest.fixture
def no_session_xla_cache():
  """Takes the session's shared XLA cache away for one test (one that counts compiles):
  its runs compile, or use the cache their own config names."""
  with _xla_cache_settings(jax_compilation_cache_dir=None):
    yield
