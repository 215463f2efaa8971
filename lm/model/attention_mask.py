"""Which keys each query sees, kept as per-token ids rather than a dense [B, 1, T, S] mask.

A query sees a key when both carry the same segment id (the packed document) and, for a
causal model, the key's order is <= the query's. Training and scoring attend among the
row's own tokens in order (order = index); decoding attends from tokens at positions p to a
KV cache whose slot s holds position s (order = position for queries, slot for keys). The
kernels that take segment ids (blockwise, Pallas flash, splash) read the ids directly; the
dense XLA path materializes `dense()`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """q_segments [B, T], kv_segments [B, S], q_order [B, T], kv_order [B, S] (int32).

  `causal` (static): keys with a later order are hidden. `self_attention` (static): queries
  and keys are the same T tokens of the row in index order (training, scoring), the layout
  the fused kernels take; False for a KV-cache decode."""
  q_segments: jax.Array
  kv_segments: jax.Array
  q_order: jax.Array
  kv_order: jax.Array
  causal: bool = True
  self_attention: bool = True

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """The [B, 1, T, S] shape of the dense mask this stands for."""
    return (self.q_segments.shape[0], 1, self.q_segments.shape[1], self.kv_segments.shape[1])

  def dense(self) -> jax.Array:
    """The [B, 1, T, S] boolean mask (what the XLA implementation takes)."""
    return visible(self.causal, self.q_segments, self.kv_segments, self.q_order,
                   self.kv_order)[:, None]


def visible(causal: bool, q_seg, kv_seg, q_ord, kv_ord) -> jax.Array:
  """[B, Tq, Sk] boolean from (blocks of) the ids: same segment, and for a causal mask a
  key order <= the query order."""
  seen = q_seg[..., :, None] == kv_seg[..., None, :]
  if causal:
    seen &= kv_ord[..., None, :] <= q_ord[..., :, None]
  return seen


jax.tree_util.register_dataclass(
    AttentionMask, data_fields=['q_segments', 'kv_segments', 'q_order', 'kv_order'],
    meta_fields=['causal', 'self_attention'])


def attention_mask(segment_ids_BT: jax.Array, causal: bool = True) -> AttentionMask:
  """Self-attention among a row's tokens: causal (unless `causal=False`, an encoder), and a
  token sees only its own packed document."""
  b, t = segment_ids_BT.shape
  order_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  seg_BT = segment_ids_BT.astype(jnp.int32)
  return AttentionMask(seg_BT, seg_BT, order_BT, order_BT, causal=causal, self_attention=True)


def cache_attention_mask(positions_BT: jax.Array, cache_len: int) -> AttentionMask:
  """Decoding with a KV cache whose slot s holds position s: a token at position p sees
  slots 0..p (later slots are padding or not yet written)."""
  b, t = positions_BT.shape
  slots_BS = jnp.broadcast_to(jnp.arange(cache_len, dtype=jnp.int32), (b, cache_len))
  return AttentionMask(jnp.zeros((b, t), jnp.int32), jnp.zeros((b, cache_len), jnp.int32),
                       positions_BT.astype(jnp.int32), slots_BS, causal=True,
                       self_attention=False)
