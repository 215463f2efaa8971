"""Next-token loss sums of packed rows: the pure math perplexity evaluation is made of.

`token_cross_entropy` is the per-token loss [B, T] with its weights, `loss_sums` what one
batch adds up (loss, tokens, UTF-8 bytes) and `summarize` the loss, perplexity and bits per
byte of a list of those sums. Training's eval step (lm/train/step.py) and perplexity
evaluation (lm/eval/perplexity.py) both count with these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm.model.definition import ModelDef

Batch = dict[str, jax.Array]


def byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
  """[V] UTF-8 bytes each id decodes to, zero-padded to the model's vocabulary size."""
  lengths_V = np.zeros(vocab_size, np.int32)
  tok = tokenizer.byte_lengths()
  lengths_V[:len(tok)] = tok
  return lengths_V


def token_cross_entropy(model_def: ModelDef, params: dict, batch: Batch
                        ) -> tuple[jax.Array, jax.Array]:
  """Per-token cross entropy [B, T] of batch['targets'] and its weights [B, T] (0 across
  documents and padding); batch['domains'], when there, routes a domain-routed MoE."""
  logits_BTV = model_def.merge(params)(batch['inputs'], batch['positions'],
                                       batch['segment_ids'], domains_BT=batch.get('domains'))
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch['targets'])
  return ce_BT, batch['weights'].astype(jnp.float32)


def loss_sums(model_def: ModelDef, params: dict, batch: Batch,
              byte_lengths_V: jax.Array) -> dict[str, jax.Array]:
  """{'loss_sum', 'tokens', 'bytes'} of one batch: summed weighted loss, weight, bytes."""
  ce_BT, w_BT = token_cross_entropy(model_def, params, batch)
  return weighted_sums(ce_BT, w_BT, batch['targets'], byte_lengths_V)


def target_bytes(targets_BT: jax.Array, byte_lengths_V: jax.Array) -> jax.Array:
  """[B, T] UTF-8 bytes of each target token."""
  return jnp.take(byte_lengths_V, targets_BT).astype(jnp.float32)


def weighted_sums(ce_BT: jax.Array, w_BT: jax.Array, targets_BT: jax.Array,
                  byte_lengths_V: jax.Array) -> dict[str, jax.Array]:
  """{'loss_sum', 'tokens', 'bytes'} of per-token losses with their weights."""
  bytes_BT = target_bytes(targets_BT, byte_lengths_V)
  return {'loss_sum': jnp.sum(ce_BT * w_BT), 'tokens': jnp.sum(w_BT),
          'bytes': jnp.sum(bytes_BT * w_BT)}


def summarize(sums: Sequence[dict]) -> dict[str, float]:
  """Loss (nats/token), perplexity, bits per byte, tokens and bytes of per-batch sums."""
  loss_sum = sum(float(s['loss_sum']) for s in sums)
  tokens = sum(float(s['tokens']) for s in sums)
  nbytes = sum(float(s['bytes']) for s in sums)
  loss = loss_sum / max(tokens, 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 50.0)),
          'bits_per_byte': loss_sum / max(nbytes, 1.0) / math.log(2),
          'tokens': int(tokens), 'bytes': int(nbytes)}
