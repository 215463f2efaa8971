"""Multi-process start-up: `initialize(...)` joins this process to a multi-host run.

Which run, in order: explicit arguments (lm.main's --coordinator_address, --num_processes,
--process_id) win; else a SLURM job step with more than one task; else a multi-host TPU
VM slice (jax's own detection, `jax.distributed.initialize()` with no arguments); else a
single process and nothing is done. Call it before anything touches the devices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from lm.errors import DistributedError


def detect(environ: Mapping[str, str]) -> str | None:
  """'slurm' or 'tpu' when the environment describes a multi-process run, else None."""
  try:
    if int(environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in environ:
      return 'slurm'
  except ValueError:
    pass
  hosts = [h for h in environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  if len(hosts) > 1 or environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return 'tpu'
  return None


def _check_explicit(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None) -> None:
  given = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
           '--process_id': process_id}
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise DistributedError(
        f'{", ".join(missing)} missing: a multi-process run needs all of --coordinator_address='
        'HOST:PORT (process 0 listens there), --num_processes=N and --process_id=I.')
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise DistributedError(f'--coordinator_address={coordinator_address!r} must be HOST:PORT, '
                           'e.g. 127.0.0.1:12355 (process 0 listens on that port).')
  if num_processes < 1:
    raise DistributedError(f'--num_processes={num_processes} must be >= 1.')
  if not 0 <= process_id < num_processes:
    raise DistributedError(f'--process_id={process_id} must be in [0, --num_processes='
                           f'{num_processes}).')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               environ: Mapping[str, str] | None = None) -> str:
  """Joins the multi-process run described by the arguments or the environment.

  Returns how: 'explicit', 'slurm', 'tpu', or 'single' (nothing done). CPU collectives
  go over gloo, so fake-device CPU processes can train together. Calling it again once
  initialized does nothing.
  """
  environ = os.environ if environ is None else environ
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if explicit:
    _check_explicit(coordinator_address, num_processes, process_id)
    how = 'explicit'
  else:
    how = detect(environ) or 'single'
  if how == 'single' or (how == 'explicit' and num_processes == 1):
    return 'single'
  if jax.distributed.is_initialized():
    return how
  # Cross-process collectives on the CPU backend (fake devices, CPU-only clusters); the
  # setting only concerns the CPU client, so it is harmless next to a GPU or TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if how == 'explicit':
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:  # jax reads the SLURM / TPU environment itself
    jax.distributed.initialize()
  return how
