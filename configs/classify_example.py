"""Sequence classification: is a stdlib snippet a docstring or code? (docs/finetuning.md)

Records are generated from the stdlib (lm/data/examples.py). By default this fine-tunes
the encoder of configs/bert_mlm.py (first-token pooling):

  python -m lm.main --config=configs/bert_mlm.py --workdir=workdirs/bert_mlm
  python -m lm.main --config=configs/classify_example.py \\
      --config.init_from=workdirs/bert_mlm --workdir=workdirs/classify

Without init_from the same model trains from scratch (a baseline for the pretraining).
"""

from configs import bert_mlm


def get_config():
  c = bert_mlm.get_config()  # the same model, so its checkpoint loads
  c.data.format = 'classify'
  c.data.max_docs = 6000  # records generated (half docstrings, half code)
  c.data.val_fraction = 0.1
  c.data.seq_len = 64
  c.model.max_len = 128  # bert_mlm's learned position table (its data.seq_len)
  c.model.num_classes = 2
  c.model.dropout = 0.1
  c.train.task = 'classify'
  c.train.steps = 300
  c.train.batch_size = 32
  c.train.eval_every = 100
  c.train.eval_batches = 20
  c.checkpoint.every = 300
  c.optimizer.lr = 5e-4
  c.optimizer.min_lr = 5e-5
  c.optimizer.warmup_steps = 30
  return c
