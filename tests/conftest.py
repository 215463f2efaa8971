"""Every test sees 8 fake CPU devices; the flag must be set before jax is imported."""

import os
import tempfile

# Prepared data goes to a throwaway cache unless a test names its own: never ~/.cache/lm.
os.environ.setdefault('LM_CACHE', tempfile.mkdtemp(prefix='lm-test-cache-'))
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the flag on purpose)
import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long end-to-end test (deselect with -m "not slow")')


@pytest.fixture(scope='session', autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, 'tests expect 8 fake CPU devices (tests/conftest.py)'
