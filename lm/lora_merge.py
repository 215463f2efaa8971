"""Shim: `python -m lm.lora_merge` is `python -m lm lora_merge` (lm/cli/lora_merge.py)."""

from lm.cli import lora_merge

if __name__ == '__main__':
  lora_merge.run()
