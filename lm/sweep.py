"""Shim: `python -m lm.sweep` is `python -m lm sweep` (lm/cli/sweep.py)."""

from lm.cli import sweep

if __name__ == '__main__':
  sweep.run()
