"""A tiny Trainer config (1 layer, width 32, byte tokens, 10 steps) on a small corpus, shared
by the breakdown and compilation-cache tests."""

import pathlib

import ml_collections

from configs.default import get_config

TEXT = ('the quick brown fox jumps over the lazy dog. a stitch in time saves nine. '
        'all that glitters is not gold. ') * 40


def tiny_config(root: pathlib.Path) -> ml_collections.ConfigDict:
  corpus = root / 'corpus.txt'
  corpus.write_text(TEXT)
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(root / 'data_cache')
  c.data.split, c.data.val_fraction, c.data.seq_len = 'tail', 0.2, 16
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.model.unroll_layers = False
  c.optimizer.warmup_steps = 2
  c.train.steps, c.train.batch_size = 10, 8
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.eval_every = c.checkpoint.every = 10
  c.train.eval_batches = 2
  c.train.sample_tokens, c.train.sample_prompt_tokens = 8, 4
  c.checkpoint.async_save = False
  return c
