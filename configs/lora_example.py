"""LoRA fine-tuning: configs/sft_example.py with rank-8 adapters (docs/finetuning.md).

Only the adapters train (the start-up summary gives the trainable share and the optimizer
memory saved). Merge them into the base weights for export:

  python -m lm.main --config=configs/lora_example.py \\
      --config.init_from=workdirs/default --workdir=workdirs/lora
  python -m lm.lora_merge --workdir=workdirs/lora --out=workdirs/lora_merged
"""

from configs import sft_example


def get_config():
  c = sft_example.get_config()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.05
  c.lora.targets = ('qkv', 'out', 'mlp_in', 'mlp_out')
  c.optimizer.lr = 3e-3  # adapters start at zero and take a larger rate
  c.optimizer.min_lr = 3e-4
  return c
