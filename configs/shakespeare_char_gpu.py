"""nanoGPT's GPU Shakespeare config: 6 layers, 6 heads, width 384, context 256, batch 64.

As nanoGPT's `config/train_shakespeare_char.py` (dropout 0.2, 5000 iterations,
lr 1e-3 cosine to 1e-4); meant for a GPU, and used by `lm.bench` on the CPU too.
"""

from configs import shakespeare_char


def get_config():
  c = shakespeare_char.get_config()
  c.data.seq_len = 256
  c.model.num_layers = 6
  c.model.width = 384
  c.model.num_heads = 6
  c.model.num_kv_heads = 6
  c.model.mlp_dim = 1536
  c.model.dropout = 0.2
  c.train.steps = 5000
  c.train.batch_size = 64
  c.train.eval_every = 250
  c.train.eval_batches = 20
  c.checkpoint.every = 1000
  return c
