"""Process-level settings that must be made before jax is imported.

`use_cpu_devices(n)` splits the host CPU into n XLA devices, each running its
single-threaded share of a data-parallel batch. On a small CPU this beats one
device whose many small ops are each split across all cores (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sys
import warnings

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def use_cpu_devices(n: int) -> None:
  """n > 0: n CPU devices; -1: one per core; 0: leave XLA's default (one device).

  Does nothing when XLA_FLAGS already sets the device count (the caller's choice wins).
  """
  if n == 0 or DEVICE_COUNT_FLAG in os.environ.get('XLA_FLAGS', ''):
    return
  if 'jax' in sys.modules:
    warnings.warn('runtime.cpu_devices is ignored: jax was imported before it could be set '
                  f'(set XLA_FLAGS={DEVICE_COUNT_FLAG}=N before importing jax instead)',
                  stacklevel=2)
    return
  count = (os.cpu_count() or 1) if n < 0 else n
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = (f'{flags} {DEVICE_COUNT_FLAG}={count} '
                             '--xla_cpu_multi_thread_eigen=false').strip()


def config_from_flag(holder):
  """The --config flag's ConfigDict with its runtime settings applied (before jax starts);
  a config file that does not load ends the program with one line naming it."""
  from lm import config as config_lib

  try:
    config = config_lib.from_flag(holder)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  use_cpu_devices(config.runtime.cpu_devices)
  return config
