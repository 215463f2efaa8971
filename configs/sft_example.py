"""Supervised fine-tuning: docstring -> `def` line of stdlib functions (docs/finetuning.md).

Prompt/response records are generated from the stdlib (lm/data/examples.py); the loss
is on response tokens only. Fine-tune the default language model:

  python -m lm.main --config=configs/default.py --workdir=workdirs/default
  python -m lm.main --config=configs/sft_example.py \\
      --config.init_from=workdirs/default --workdir=workdirs/sft

Your own data: --config.data.source=text --config.data.path=my.jsonl with lines
{"prompt": ..., "response": ...} or {"messages": [{"role": "user", "content": ...}, ...]}.
"""

from configs import default


def get_config():
  c = default.get_config()  # the same model and tokenizer as the base run
  c.data.format = 'sft'
  c.data.max_docs = 8000  # records generated
  c.data.val_fraction = 0.05
  c.train.task = 'sft'
  c.train.steps = 300
  c.train.eval_every = 100
  c.train.sample_tokens = 24
  c.checkpoint.every = 300
  c.optimizer.lr = 1e-3
  c.optimizer.min_lr = 1e-4
  c.optimizer.warmup_steps = 30
  c.runtime.cpu_devices = -1
  return c
