"""Shim: `python -m lm.quantize` is `python -m lm quantize` (lm/cli/quantize.py)."""

from lm.cli import quantize

if __name__ == '__main__':
  quantize.run()
