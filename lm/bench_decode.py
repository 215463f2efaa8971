"""Shim: `python -m lm.bench_decode` is `python -m lm bench_decode` (lm/cli/bench_decode.py)."""

from lm.cli import bench_decode

if __name__ == '__main__':
  bench_decode.run()
