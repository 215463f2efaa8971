"""Shim: `python -m lm.main` (how lm's users train) is `python -m lm train` (lm/cli/train.py)."""

from lm.cli import train

if __name__ == '__main__':
  train.run()
