"""Shim: `python -m lm.btm` is `python -m lm btm` (lm/cli/btm.py)."""

from lm.cli import btm

if __name__ == '__main__':
  btm.run()
