"""Shim: `python -m lm.plot` is `python -m lm plot` (lm/cli/plot.py)."""

from lm.cli import plot

if __name__ == '__main__':
  plot.run()
