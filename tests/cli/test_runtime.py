"""runtime.cpu_devices: the CPU split into XLA devices, set in a fresh process before jax."""

import os
import subprocess
import sys
from pathlib import Path

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
PROBE = ('from lm import runtime; runtime.use_cpu_devices({n}); import jax; '
         'print(jax.device_count(), jax.default_backend())')


def _device_count(n: int, xla_flags: str = '') -> str:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', **({'XLA_FLAGS': xla_flags} if xla_flags else {}))
  result = subprocess.run([sys.executable, '-c', PROBE.format(n=n)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
  return result.stdout.split()[0]


def test_cpu_devices_splits_the_host():
  assert _device_count(0) == '1'
  assert _device_count(3) == '3'
  assert _device_count(-1) == str(os.cpu_count())


def test_an_explicit_xla_flag_wins():
  assert _device_count(3, '--xla_force_host_platform_device_count=5') == '5'
