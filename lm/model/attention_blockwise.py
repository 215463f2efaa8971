"""Memory-efficient attention in plain JAX: an online softmax over key blocks.

Queries are cut into blocks of `block_q` and keys into blocks of `block_kv`; for each query
block a scan over key blocks keeps the running max, normaliser and weighted sum (float32),
so no more than one [B, N, block_q, block_kv] tile of scores exists at a time. The custom
VJP needs only q, k, v, the output and the log-sum-exp per query ([B, N, T]) and recomputes
each tile in the backward pass (one pass for dq, one for dk/dv), so activation memory grows
linearly in T, also inside the model's differentiated scan over layers (see _loop_variant).
Who sees whom comes from an AttentionMask's segment ids and orders; for a
causal self-attention mask the tiles above the diagonal are skipped (a scalar `lax.cond`
on the block indices, no cross-device reduction), which halves the work.

Works for any T and S (padded to whole blocks with ids that match nothing), grouped /
multi-query heads (queries are grouped per KV head, K and V are never repeated) and
bidirectional models; no dropout on the probabilities (the model has none).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm.model.attention_mask import AttentionMask, visible

NEG = -1e30  # a masked score: finite, so a row without any visible key yields no NaN
_PAD_Q, _PAD_KV = -2**31, -2**31 + 1  # segment ids of padding: they match nothing
DEFAULT_BLOCK = 512


def blockwise_attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array,
                        mask: AttentionMask, *, block_q: int = DEFAULT_BLOCK,
                        block_kv: int = DEFAULT_BLOCK, scale: float | None = None
                        ) -> jax.Array:
  """softmax(q k^T * scale, restricted to `mask`) v, as jax.nn.dot_product_attention, in
  O(T) memory. q [B, T, N, H]; k, v [B, S, K, H] with N a multiple of K. A query without
  any visible key gets zeros."""
  b, t, n, h = q_BTNH.shape
  s, kh = k_BSKH.shape[1], k_BSKH.shape[2]
  g = n // kh
  scale = h ** -0.5 if scale is None else float(scale)
  bq, bk = min(block_q, t), min(block_kv, s)
  nq, nk = -(-t // bq), -(-s // bk)
  tp, sp = nq * bq, nk * bk

  def blocks(x, length, blk, pad_value=0):  # [B, L, ...] -> [L / blk, B, blk, ...]
    pad = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=pad_value)
    x = x.reshape(x.shape[0], length // blk, blk, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  q = blocks(q_BTNH.reshape(b, t, kh, g, h), tp, bq)
  k, v = blocks(k_BSKH, sp, bk), blocks(v_BSKH, sp, bk)
  ids = (blocks(mask.q_segments, tp, bq, _PAD_Q), blocks(mask.kv_segments, sp, bk, _PAD_KV),
         blocks(mask.q_order, tp, bq), blocks(mask.kv_order, sp, bk))
  # Only a causal self-attention mask has tiles that are hidden whatever the ids.
  skip = (bq, bk) if (mask.causal and mask.self_attention) else None
  o = _attend(mask.causal, skip, scale, q, k, v, *ids)  # [nq, B, K, G, bq, H]
  o = jnp.moveaxis(o, 0, 1)  # [B, nq, K, G, bq, H]
  o = jnp.transpose(o, (0, 1, 4, 2, 3, 5)).reshape(b, tp, n, h)
  return o[:, :t]


def _needed(skip, i, j):
  """False for a tile wholly above the causal diagonal (query block i, key block j)."""
  if skip is None:
    return jnp.bool_(True)
  bq, bk = skip
  return j * bk <= i * bq + bq - 1


def _tile(causal, scale, q, k, qs, ks, qo, ko):
  """Scores [B, K, G, bq, bk] (float32) of one tile, a masked score pushed to ~NEG, and the
  tile's mask as 0/1 floats [B, 1, 1, bq, bk] (probabilities are multiplied by it)."""
  keep = visible(causal, qs, ks, qo, ko)[:, None, None]
  s = jnp.einsum('bqkgh,bskh->bkgqs', q, k, preferred_element_type=jnp.float32) * scale
  # `s + NEG`, not the literal NEG: see _loop_variant (no tile-sized constant in the loops).
  return jnp.where(keep, s, s + NEG), keep.astype(jnp.float32)


def _loop_variant(*xs):
  """`xs` through an optimization barrier, so that everything computed from them (the tile
  masks from the ids) depends on q for JAX's partial evaluation.

  When the model's lax.scan over layers is differentiated, JAX (jax/_src/lax/control_flow/
  loops.py, _scan_known_hoisting) evaluates ahead of the loop every computation of the
  forward body that depends on the scan's constants alone (the ids of the mask are the same
  for every layer) or on nothing (a broadcast literal): inside these nested block loops that
  would be a mask or a constant for every (query block, key block) tile at once, stacked:
  quadratic in T (tests/unit/model/test_attention_memory.py)."""
  return jax.lax.optimization_barrier(xs)


def _forward(causal, skip, scale, q, k, v, qs, ks, qo, ko):
  """(out [nq, B, K, G, bq, H], log-sum-exp [nq, B, K, G, bq])."""
  nq, nk = q.shape[0], k.shape[0]
  b, bq, kh, g, h = q.shape[1:]
  q, k, v, qs, ks, qo, ko = _loop_variant(q, k, v, qs, ks, qo, ko)

  def q_block(_, xs):
    i, q_i, qs_i, qo_i = xs

    def kv_block(carry, ys):
      j, k_j, v_j, ks_j, ko_j = ys

      def update(carry):
        m, norm, acc = carry
        s, keep = _tile(causal, scale, q_i, k_j, qs_i, ks_j, qo_i, ko_j)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None]) * keep
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum('bkgqs,bskh->bkgqh', p.astype(v_j.dtype), v_j,
                        preferred_element_type=jnp.float32)
        return m_new, norm * corr + p.sum(-1), acc * corr[..., None] + pv

      return jax.lax.cond(_needed(skip, i, j), update, lambda c: c, carry), None

    init = (jnp.full((b, kh, g, bq), NEG, jnp.float32), jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, h), jnp.float32))
    (m, norm, acc), _ = jax.lax.scan(kv_block, init, (jnp.arange(nk), k, v, ks, ko))
    safe = jnp.where(norm > 0, norm, 1.0)
    o = (acc / safe[..., None]).astype(q.dtype)
    lse = jnp.where(norm > 0, m + jnp.log(safe), 0.0)
    return None, (o, lse)

  _, (o, lse) = jax.lax.scan(q_block, None, (jnp.arange(nq), q, qs, qo))
  return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _attend(causal, skip, scale, q, k, v, qs, ks, qo, ko):
  return _forward(causal, skip, scale, q, k, v, qs, ks, qo, ko)[0]


def _attend_fwd(causal, skip, scale, q, k, v, qs, ks, qo, ko):
  o, lse = _forward(causal, skip, scale, q, k, v, qs, ks, qo, ko)
  return o, (q, k, v, qs, ks, qo, ko, o, lse)


def _attend_bwd(causal, skip, scale, res, do):
  q, k, v, qs, ks, qo, ko, o, lse = res
  nq, nk = q.shape[0], k.shape[0]
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), -1)  # [nq, B, K, G, bq]

  def grads(q_i, k_j, v_j, qs_i, ks_j, qo_i, ko_j, do_i, lse_i, delta_i):
    """(probabilities, score gradients) [B, K, G, bq, bk] of one tile."""
    s, keep = _tile(causal, scale, q_i, k_j, qs_i, ks_j, qo_i, ko_j)
    p = jnp.exp(s - lse_i[..., None]) * keep
    dp = jnp.einsum('bkgqh,bskh->bkgqs', do_i, v_j, preferred_element_type=jnp.float32)
    return p, p * (dp - delta_i[..., None])

  def dq_block(_, xs):  # one query block against every key block
    i, q_i, qs_i, qo_i, do_i, lse_i, delta_i = xs

    def kv_block(dq, ys):
      j, k_j, v_j, ks_j, ko_j = ys

      def update(dq):
        _, ds = grads(q_i, k_j, v_j, qs_i, ks_j, qo_i, ko_j, do_i, lse_i, delta_i)
        return dq + jnp.einsum('bkgqs,bskh->bqkgh', ds.astype(k_j.dtype), k_j,
                               preferred_element_type=jnp.float32) * scale

      return jax.lax.cond(_needed(skip, i, j), update, lambda d: d, dq), None

    dq, _ = jax.lax.scan(kv_block, jnp.zeros(q_i.shape, jnp.float32),
                         (jnp.arange(nk), k, v, ks, ko))
    return None, dq.astype(q.dtype)

  def dkv_block(_, ys):  # one key block against every query block
    j, k_j, v_j, ks_j, ko_j = ys

    def q_block(carry, xs):
      i, q_i, qs_i, qo_i, do_i, lse_i, delta_i = xs

      def update(carry):
        dk, dv = carry
        p, ds = grads(q_i, k_j, v_j, qs_i, ks_j, qo_i, ko_j, do_i, lse_i, delta_i)
        dv = dv + jnp.einsum('bkgqs,bkgqh->bskh', p.astype(do_i.dtype), do_i,
                             preferred_element_type=jnp.float32)
        dk = dk + jnp.einsum('bkgqs,bqkgh->bskh', ds.astype(q_i.dtype), q_i,
                             preferred_element_type=jnp.float32) * scale
        return dk, dv

      return jax.lax.cond(_needed(skip, i, j), update, lambda c: c, carry), None

    init = (jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32))
    (dk, dv), _ = jax.lax.scan(q_block, init, (jnp.arange(nq), q, qs, qo, do, lse, delta))
    return None, (dk.astype(k.dtype), dv.astype(v.dtype))

  _, dq = jax.lax.scan(dq_block, None, (jnp.arange(nq), q, qs, qo, do, lse, delta))
  _, (dk, dv) = jax.lax.scan(dkv_block, None, (jnp.arange(nk), k, v, ks, ko))
  return dq, dk, dv, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)
