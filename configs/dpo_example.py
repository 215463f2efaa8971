"""Preference tuning (DPO) of the default model: real stdlib code over the same lines
reversed (docs/finetuning.md). The pairs are generated from the stdlib
(lm/data/preference.py: stdlib_records); the reference is the init_from model, frozen.

  python -m lm.main --config=configs/default.py --workdir=workdirs/default
  python -m lm.main --config=configs/dpo_example.py \\
      --config.init_from=workdirs/default --workdir=workdirs/dpo

metrics.jsonl has eval/reward_accuracy (its step-0 row: 0.5, every reward is 0), the chosen
and rejected rewards and their margin; a shortened run's before/after is in
docs/finetuning.md ("Measured"). Your own pairs: --config.data.source=text
--config.data.path=pairs.jsonl (see examples/dpo_pairs.jsonl for the record forms).
"""

from configs import default


def get_config():
  c = default.get_config()  # the same model and tokenizer as the base run
  c.data.format = 'preference'
  c.data.source = 'stdlib'
  c.data.max_docs = 4000  # pairs generated
  c.data.val_fraction = 0.1
  c.train.task = 'dpo'
  c.train.dpo.loss = 'sigmoid'
  c.train.dpo.beta = 0.1
  c.train.steps = 200
  c.train.eval_every = 50
  c.train.sample_tokens = 0
  c.checkpoint.every = 200
  c.optimizer.lr = 1e-4
  c.optimizer.min_lr = 1e-5
  c.optimizer.warmup_steps = 20
  c.runtime.cpu_devices = -1
  return c
