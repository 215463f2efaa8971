"""Shim: `python -m lm.convert` is `python -m lm convert` (lm/cli/convert.py)."""

from lm.cli import convert

if __name__ == '__main__':
  convert.run()
