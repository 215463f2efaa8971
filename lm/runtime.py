"""Process-level settings that must be made before jax starts its backends.

`use_cpu_devices(n)` splits the host CPU into n XLA devices, each running its
single-threaded share of a data-parallel batch. On a small CPU this beats one
device whose many small ops are each split across all cores (docs/benchmarks.md).
Importing jax is fine beforehand: the settings only have to precede the first use of a
device (jax reads them when it creates its backends).

`use_compilation_cache(path)` turns on jax's persistent compilation cache (any time).
"""

from __future__ import annotations

import os
import warnings

import jax
from jax.experimental.compilation_cache import compilation_cache

from lm.data import cache as data_cache

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
_SINGLE_THREAD_FLAG = '--xla_cpu_multi_thread_eigen=false'


def use_cpu_devices(n: int) -> None:
  """n > 0: n CPU devices; -1: one per core; 0: leave XLA's default (one device).

  Does nothing when XLA_FLAGS already sets the device count (the caller's choice wins).
  """
  if n == 0 or DEVICE_COUNT_FLAG in os.environ.get('XLA_FLAGS', ''):
    return
  count = (os.cpu_count() or 1) if n < 0 else n
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # the backends already run (a notebook that used jax before)
    warnings.warn('runtime.cpu_devices is ignored: jax already started its devices (set it, '
                  f'or XLA_FLAGS={DEVICE_COUNT_FLAG}=N, before the first jax computation)',
                  stacklevel=2)
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if _SINGLE_THREAD_FLAG not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {_SINGLE_THREAD_FLAG}'.strip()


# ---- the persistent compilation cache ------------------------------------------------------

COMPILATION_CACHE_SUBDIR = 'xla'  # under the data cache root when compilation_cache_dir='auto'


def compilation_cache_path(setting: str, data_cache_dir: str = '') -> str:
  """The directory `runtime.compilation_cache_dir` names: '' -> none (off), 'auto' -> xla/
  under the data cache (data.cache_dir, else $LM_CACHE, else ~/.cache/lm), else the path."""
  if not setting:
    return ''
  if setting == 'auto':
    return str(data_cache.cache_root(data_cache_dir) / COMPILATION_CACHE_SUBDIR)
  return os.path.expanduser(setting)


def use_compilation_cache(path: str, *, min_compile_secs: float = 0.0) -> bool:
  """Keeps compiled XLA programs in `path` (jax's persistent compilation cache), so a rerun,
  resume or sweep point loads an identical program instead of compiling it. The cache key
  is the program, its compile options, devices and jax/XLA versions: a hit is the
  executable that would have been compiled, so results do not change.

  Programs that compiled in under `min_compile_secs` are not stored. Does nothing when
  `path` is '' or the caller already set jax_compilation_cache_dir (the caller's choice
  wins; returns False then)."""
  if not path or jax.config.jax_compilation_cache_dir:
    return False
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_secs))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)  # no size floor
  compilation_cache.reset_cache()  # a compile before this may have settled "no cache"
  return True


def apply(runtime_cfg, data_cache_dir: str = '') -> None:
  """Applies a config's runtime section: CPU devices and the compilation cache."""
  use_cpu_devices(runtime_cfg.cpu_devices)
  setting = runtime_cfg.get('compilation_cache_dir', '')  # a config of before the key: off
  use_compilation_cache(compilation_cache_path(setting, data_cache_dir),
                        min_compile_secs=runtime_cfg.get('compilation_cache_min_compile_secs', 0.0))
