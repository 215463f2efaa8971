"""Shim: `python -m lm.inspect` is `python -m lm inspect` (lm/cli/inspect.py)."""

from lm.cli import inspect

if __name__ == '__main__':
  inspect.run()
