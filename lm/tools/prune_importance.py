"""Activation-based importance of a dense model's parts, for structured pruning.

Minitron's estimate (Muralidharan et al. 2024, "Compact Language Models via Pruning and
Knowledge Distillation", section 2.2), from forward passes over a calibration sample only:

- an MLP neuron: the magnitude of its activation (the input to the down projection);
- an attention head: the L2 norm of its output (before the output projection); a KV group
  (grouped-query attention) scores the sum of its query heads;
- an embedding channel: the magnitude of that channel in the outputs of every norm (each
  block's two and the final one), summed over the norms;
- a layer: block importance (ShortGPT's BI), 1 - cos(input, output) of the block's residual
  stream, averaged over tokens.

Width scores are aggregated as the paper's best choice: the mean over a row's tokens, then
the L2 norm over rows. Padding tokens (segment id 0) count for nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from lm.model import ModelDef
from lm.model.attention import attention_mask


@dataclasses.dataclass(frozen=True)
class Importance:
  """Scores (higher = keep) of every prunable part, as numpy arrays."""

  neurons: np.ndarray   # [L, F]
  heads: np.ndarray     # [L, N] query heads
  channels: np.ndarray  # [D] embedding (residual-stream) channels
  layers: np.ndarray    # [L] block importance
  tokens: int           # calibration tokens seen

  def groups(self, num_kv_heads: int) -> np.ndarray:
    """[L, K] a KV group's score: the sum of its query heads' (head n is in group n // G)."""
    num_layers, num_heads = self.heads.shape
    return self.heads.reshape(num_layers, num_kv_heads, num_heads // num_kv_heads).sum(-1)


def _row_mean(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
  """Per-row mean over valid tokens of x [B, T, ...] -> [B, ...]."""
  w_BT = valid_BT.astype(jnp.float32)
  w_BT = w_BT / jnp.maximum(w_BT.sum(1, keepdims=True), 1.0)
  return jnp.einsum('bt...,bt->b...', x_BT.astype(jnp.float32), w_BT)


def _rows_sq(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
  """Sum over rows of the squared per-row mean: the L2 aggregation over rows, squared."""
  return jnp.sum(jnp.square(_row_mean(x_BT, valid_BT)), axis=0)


def forward_with_stats(model_def: ModelDef, params: dict, batch: dict) -> tuple[jax.Array, dict]:
  """(logits [B, T, V], sums) for one batch: the model's forward pass written out block by
  block (the same modules Block.__call__ runs) with every activation the scores need at
  hand. `sums` are additive over batches (squared row aggregates, BI sums, token count)."""
  cfg = model_def.cfg
  model = model_def.merge(params)
  tokens_BT, positions_BT = batch['inputs'], batch['positions']
  segments_BT = batch['segment_ids']
  valid_BT = segments_BT != 0
  mask = attention_mask(segments_BT, causal=cfg.causal)
  x_BTD = model.embed_tokens(tokens_BT, positions_BT)
  neurons, heads, channels, layers = [], [], 0.0, []
  for block in model.layer_blocks():
    h_BTD = block.attn_norm(x_BTD)
    o_BTNH = block.attn.head_outputs(h_BTD, positions_BT, mask)
    mid_BTD = x_BTD + block.attn.out(o_BTNH)
    g_BTD = block.mlp_norm(mid_BTD)
    a_BTF = block.mlp.hidden(g_BTD)
    out_BTD = mid_BTD + block.mlp.down(a_BTF)
    heads.append(_rows_sq(jnp.linalg.norm(o_BTNH.astype(jnp.float32), axis=-1), valid_BT))
    neurons.append(_rows_sq(jnp.abs(a_BTF), valid_BT))
    channels = channels + _rows_sq(jnp.abs(h_BTD), valid_BT) + _rows_sq(jnp.abs(g_BTD), valid_BT)
    x, y = x_BTD.astype(jnp.float32), out_BTD.astype(jnp.float32)
    cos_BT = jnp.sum(x * y, -1) / jnp.maximum(
        jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1), 1e-12)
    layers.append(jnp.sum(jnp.where(valid_BT, 1.0 - cos_BT, 0.0)))
    x_BTD = out_BTD
  # The final norm's output is the one channel statistic of the last residual stream.
  channels = channels + _rows_sq(jnp.abs(model.final_norm(x_BTD)), valid_BT)
  sums = {'neurons': jnp.stack(neurons), 'heads': jnp.stack(heads), 'channels': channels,
          'layers': jnp.stack(layers), 'tokens': jnp.sum(valid_BT)}
  return model.logits(x_BTD), sums


def importance(model_def: ModelDef, params: dict, batches: Iterable[dict],
               log=None) -> Importance:
  """The scores of every part over `batches` (dicts of 'inputs', 'positions',
  'segment_ids', each [B, T])."""
  step = jax.jit(lambda p, b: forward_with_stats(model_def, p, b)[1])
  total = None
  for i, batch in enumerate(batches):
    batch = {k: jnp.asarray(batch[k]) for k in ('inputs', 'positions', 'segment_ids')}
    sums = jax.device_get(step(params, batch))
    total = sums if total is None else jax.tree.map(np.add, total, sums)
    if log:
      log(f'[prune] calibration batch {i + 1}: {int(total["tokens"]):,} tokens')
  if total is None:
    raise ValueError('importance needs at least one calibration batch')
  tokens = int(total['tokens'])
  return Importance(neurons=np.sqrt(total['neurons']), heads=np.sqrt(total['heads']),
                    channels=np.sqrt(total['channels']),
                    layers=np.asarray(total['layers']) / max(tokens, 1), tokens=tokens)
