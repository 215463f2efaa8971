"""Start-up: a command module imports jax, flax, Grain, Orbax, TFDS and datatrove only in
`main`, once its flags (and config, workdir) are checked, so `--help` and bad input answer
without them (lm/cli/__init__.py); the light library modules the checks use stay light."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
HEAVY = ('jax', 'flax', 'grain', 'orbax', 'tensorflow_datasets', 'datatrove', 'matplotlib')
LIGHT = ('lm.cli.train', 'lm.cli.generate', 'lm.cli.inspect', 'lm.cli.plan', 'lm.cli.quantize',
         'lm.cli.evaluate', 'lm.cli.serve', 'lm.cli.export', 'lm.cli.convert', 'lm.cli.clean',
         'lm.workdir', 'lm.train.metrics', 'lm.data.cache', 'lm.data.tokenizers')


@pytest.mark.parametrize('module', LIGHT)
def test_importing_imports_no_heavy_library(module):
  code = (f'import sys, {module}; print(sorted({{m.split(".")[0] for m in sys.modules}} & '
          f'set({HEAVY!r})))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert out.stdout.strip() == '[]', out.stdout + out.stderr


def test_a_library_flag_still_parses_before_main_imports_its_library():
  # (main stops at the stray argument, before it imports anything heavy)
  out = subprocess.run([sys.executable, '-m', 'lm.main', '--grain_py_debug_mode', 'stray'],
                       capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert out.returncode == 1 and 'unexpected arguments: stray' in out.stderr, out.stderr
