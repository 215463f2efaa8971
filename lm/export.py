"""Shim: `python -m lm.export` is `python -m lm export` (lm/cli/export.py)."""

from lm.cli import export

if __name__ == '__main__':
  export.run()
