"""Shim: `python -m lm.generate` is `python -m lm generate` (lm/cli/generate.py)."""

from lm.cli import generate

if __name__ == '__main__':
  generate.run()
