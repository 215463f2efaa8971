"""Compile time of the tests' tiny train step on 8 fake CPU devices under XLA flags
(docs/benchmarks.md, "The test suite").

  JAX_DISABLE_MOST_OPTIMIZATIONS=1 python experiments/compile_time/train_step_compile.py \
      [--xla_flags='--xla_cpu_use_fusion_emitters=false']

Builds tests/train_fixtures.py's tiny model (2 layers, width 32, byte tokens, sequence 32)
from configs/default.py, lowers its train step for the abstract state and batches, and
prints the seconds `.compile()` takes. Run it once per flag set: XLA reads its flags once,
at start-up.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_parser.add_argument('--xla_flags', default='', help='extra XLA_FLAGS for this process')
_args = _parser.parse_args()
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count=8 {_args.xla_flags}'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_REPO), str(_REPO / 'tests')]

import train_fixtures  # noqa: E402

from configs import default  # noqa: E402
from lm.train import build  # noqa: E402


def main() -> None:
  cache = pathlib.Path(tempfile.mkdtemp(prefix='lm-compile-time-'))
  cfg = build.resolve(train_fixtures.tiny(default.get_config(), cache, seq_len=32))
  setup = build.build(cfg, vocab_size=259)
  lowered = setup.train_step.lower(setup.abstract_state(), setup.abstract_batches())
  start = time.perf_counter()
  lowered.compile()
  level = os.environ.get('JAX_DISABLE_MOST_OPTIMIZATIONS', '0')
  print(f'XLA_FLAGS={os.environ["XLA_FLAGS"]!r} JAX_DISABLE_MOST_OPTIMIZATIONS={level}: '
        f'train step compile {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
  main()
