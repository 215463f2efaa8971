"""Shim: `python -m lm.bench` is `python -m lm bench` (lm/cli/bench.py)."""

from lm.cli import bench

if __name__ == '__main__':
  bench.run()
