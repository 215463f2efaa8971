"""Shim: `python -m lm.serve` is `python -m lm serve` (lm/cli/serve.py)."""

from lm.cli import serve

if __name__ == '__main__':
  serve.run()
