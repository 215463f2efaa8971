"""Shim: `python -m lm.evaluate` is `python -m lm evaluate` (lm/cli/evaluate.py)."""

from lm.cli import evaluate

if __name__ == '__main__':
  evaluate.run()
