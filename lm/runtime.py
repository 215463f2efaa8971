"""Process-level settings that must be made before jax starts its backends.

`use_cpu_devices(n)` splits the host CPU into n XLA devices, each running its
single-threaded share of a data-parallel batch. On a small CPU this beats one
device whose many small ops are each split across all cores (docs/benchmarks.md).
Importing jax is fine beforehand: the settings only have to precede the first use of a
device (jax reads them when it creates its backends).
"""

from __future__ import annotations

import os
import warnings

import jax

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
