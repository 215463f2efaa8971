"""Every test sees 8 fake CPU devices; the flag must be set before jax is imported."""

import os
import tempfile

# Prepared data goes to a throwaway cache unless a test names its own: never ~/.cache/lm.
os.environ.setdefault('LM_CACHE', tempfile.mkdtemp(prefix='lm-test-cache-'))
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
# XLA:CPU's older loop emitters compile a tiny model's train step in half the time of its
# new fusion emitters at the level-0 LLVM below (0.97 s against 1.95 s; at full
# optimization the two take the same time). Same HLO, same fusions. An XLA_FLAGS that
# names the flag keeps its own value.
if '--xla_cpu_use_fusion_emitters' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_cpu_use_fusion_emitters=false'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent XLA cache for the session, every program stored: most of the suite's time
# is compiling the same tiny models again in other tests, xdist workers and subprocesses
# (which inherit these). A hit is the executable a compile would give (lm/runtime.py).
# Tests that count compiles or test the cache itself set their own (tests/train_fixtures.py).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='lm-test-xla-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
# The rest of it is LLVM optimizing code that runs for milliseconds: level 0 (jax's
# disable_most_optimizations; XLA's HLO passes, fusion and sharding still run) took
# tests/unit/infer from 148 s to 103 s. The tests check results, not speed; level 0 is the
# same arithmetic (fast-math is off) up to an ulp in a few transcendental functions.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs them on fully optimized code.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402  (after the flag on purpose)
import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long end-to-end test (deselect with -m "not slow")')


# The files that take the most CPU time, heaviest first (per-test CPU profile of the suite).
# `-n 2 --dist loadfile` hands out whole files in collection order (pytest.ini turns off
# xdist's reordering by test count, which put the few-test, heavy integration files last
# and left one worker running them alone): starting with these lets the many small files
# fill in, so both workers finish together. Order only; a file missing here runs after them.
HEAVIEST_FIRST = (
    'integration/test_multihost.py', 'unit/train/test_train.py', 'unit/train/test_dpo.py',
    'integration/test_portable.py', 'unit/tools/test_inspect.py', 'unit/infer/test_export.py',
    'unit/infer/test_generate.py', 'unit/model/test_moe.py', 'unit/tools/test_prune.py',
    'cli/test_main.py', 'unit/train/test_distill.py', 'unit/tools/test_plan.py',
    'unit/eval/test_evaluate.py', 'unit/compat/test_convert.py',
    'unit/parallel/test_parallel.py', 'integration/test_notebook.py',
    'unit/data/test_domains.py', 'unit/train/test_finetune.py', 'unit/serve/test_engine.py',
    'unit/model/test_model.py', 'unit/model/test_encoder.py', 'unit/model/test_lora.py',
    'unit/model/test_attention.py', 'cli/test_launch.py', 'unit/model/test_quantize.py',
    'unit/eval/test_eval_runs.py', 'unit/parallel/test_decode_sharding.py',
    'unit/model/test_moe_grouped.py', 'unit/data/test_clean.py', 'unit/serve/test_serve.py',
    'unit/compat/test_hf_chat.py',
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}

  def file_rank(item):
    path = item.nodeid.split('::')[0].removeprefix('tests/')
    return rank.get(path, len(rank))

  items.sort(key=file_rank)  # stable: tests inside a file, and the other files, keep order


@pytest.fixture(scope='session', autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, 'tests expect 8 fake CPU devices (tests/conftest.py)'
