"""Shim: `python -m lm.plan` is `python -m lm plan` (lm/cli/plan.py)."""

from lm.cli import plan

if __name__ == '__main__':
  plan.run()
