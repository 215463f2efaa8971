"""BERT-style encoder pretraining: masked-LM on the stdlib corpus (docs/finetuning.md).

A bidirectional configuration of the same Transformer (model.causal=False); 15% of the
tokens are selected each step (80% [MASK], 10% random, 10% kept) and predicted.
Fine-tune it with configs/classify_example.py --config.init_from=workdirs/bert_mlm.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.seq_len = 128
  c.data.tokenizer.kind = 'byte'  # the classify records are tokenized with this tokenizer

  c.model.causal = False
  c.model.num_layers = 4
  c.model.width = 128
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp_dim = 384
  c.model.norm = 'layernorm'
  c.model.mlp = 'gelu'
  c.model.position = 'learned'
  c.model.tie_embeddings = True

  c.optimizer.lr = 1e-3
  c.optimizer.min_lr = 1e-4
  c.train.task = 'mlm'
  c.train.mlm_rate = 0.15
  c.train.steps = 1000
  c.train.eval_every = 250
  c.train.sample_tokens = 0  # an encoder does not generate
  c.checkpoint.every = 500
  c.runtime.cpu_devices = -1
  return c
