"""Multi-head attention with grouped/multi-query KV heads, RoPE and packed-sequence masks.

Who sees whom travels as an AttentionMask (segment ids and orders, lm/model/attention_mask.py),
never as a dense [B, 1, T, T] array; the implementation (`model.attention`, resolved per
backend and shape by lm.model.attention_kernels.choose) reads what it needs from it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.model.attention_kernels import attend, choose, is_concrete_length
from lm.model.attention_mask import AttentionMask, attention_mask, cache_attention_mask
from lm.model.config import ModelConfig
from lm.model.layers import Projection, dropout

__all__ = ['Attention', 'AttentionMask', 'attention_mask', 'cache_attention_mask', 'rope']


def rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float, *,
         row_local: bool = False) -> jax.Array:
  """Rotary position embedding (rotate-half convention, as LLaMA/HF).

  `row_local`: the positions are 0..T-1 within the row (training and evaluation; a packed
  row restarts them per document), so sin/cos are looked up in a table of T positions
  built once in NumPy; a position outside 0..T-1 reads NaN (jnp.take's fill), not a wrong
  angle. Computed in the program instead, XLA:CPU fuses the sin/cos into every consumer
  and re-evaluates them per element of q and k and of their gradients (the speedrun
  step's q/k/v-gradient fusions: ~5 ms per step, under 1 ms with the table;
  docs/benchmarks.md). Decoding (positions anywhere in the cache) computes them."""
  half = x_BTNH.shape[-1] // 2
  if row_local:
    sin_TH, cos_TH = _rope_table(x_BTNH.shape[1], half, float(theta))
    sin_BT1H = jnp.take(sin_TH, positions_BT, axis=0, mode='fill')[:, :, None, :]
    cos_BT1H = jnp.take(cos_TH, positions_BT, axis=0, mode='fill')[:, :, None, :]
  else:
    angle_BTH = positions_BT[..., None].astype(jnp.float32) * _rope_freqs(half, theta)
    sin_BT1H = jnp.sin(angle_BTH)[:, :, None, :]
    cos_BT1H = jnp.cos(angle_BTH)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1H - x2 * sin_BT1H, x2 * cos_BT1H + x1 * sin_BT1H], -1)
  return out.astype(x_BTNH.dtype)


def _rope_freqs(half: int, theta: float) -> np.ndarray:
  """RoPE's per-pair frequencies theta^(-i / half) [half] (float32)."""
  return (np.float32(theta) ** (-np.arange(half, dtype=np.float32) / np.float32(half))
          ).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _rope_table(length: int, half: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """sin and cos [length, half] (float32) of the angles of positions 0..length-1: the
  float32 angle the computed path forms, its sine taken in float64."""
  angle_TH = (np.arange(length, dtype=np.float32)[:, None] * _rope_freqs(half, theta)
              ).astype(np.float64)
  return np.sin(angle_TH).astype(np.float32), np.cos(angle_TH).astype(np.float32)


class Attention(nnx.Module):
  """Self-attention (causal, or bidirectional for an encoder) through the implementation
  `model.attention` picks (lm.model.attention_kernels).

  Q, K and V come from one fused projection whose kernel is laid out per KV group,
  [D, K, G + 2, H] (G = query heads per KV head, then one K and one V head): one larger
  matmul is faster than three small ones, and splitting the 'kv_heads' axis over a
  tensor-parallel mesh keeps every group's q, k and v on the same device.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.groups = n // k
    common = dict(use_bias=cfg.use_bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                  rngs=rngs, quant=cfg.weight_quant)
    self.qkv = Projection('BTD,DKGH->BTKGH', (d, k, self.groups + 2, h),
                          ('embed', 'kv_heads', None, 'head_dim'), bias_dims=3,
                          std=cfg.init_std, **common)
    # GPT-2's scaled init of residual-output projections: std / sqrt(2 * layers).
    self.out = Projection('BTNH,NHD->BTD', (n, h, d), ('heads', 'head_dim', 'embed'),
                          bias_dims=1, std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, **common)
    self.cfg = cfg

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, mask: AttentionMask,
               dropout_key: jax.Array | None = None) -> jax.Array:
    q_BTNH, k_BTKH, v_BTKH = self._project(x_BTD, positions_BT)
    return self._attend(q_BTNH, k_BTKH, v_BTKH, mask, dropout_key)

  def decode(self, x_BTD: jax.Array, positions_BT: jax.Array, mask: AttentionMask,
             k_BSKH: jax.Array, v_BSKH: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attention over a KV cache: writes this call's K/V at slots `positions_BT` of each
    row, attends to the cache under `mask` (cache_attention_mask) and returns (out, k cache,
    v cache)."""
    q_BTNH, k_BTKH, v_BTKH = self._project(x_BTD, positions_BT, row_local=False)
    rows_B1 = jnp.arange(x_BTD.shape[0])[:, None]
    k_BSKH = k_BSKH.at[rows_B1, positions_BT].set(k_BTKH.astype(k_BSKH.dtype))
    v_BSKH = v_BSKH.at[rows_B1, positions_BT].set(v_BTKH.astype(v_BSKH.dtype))
    out = self._attend(q_BTNH, k_BSKH.astype(q_BTNH.dtype), v_BSKH.astype(q_BTNH.dtype),
                       mask, None)
    return out, k_BSKH, v_BSKH

  def probs(self, x_BTD: jax.Array, positions_BT: jax.Array, mask: AttentionMask
            ) -> jax.Array:
    """The attention weights [B, N, T, S] (float32) of every query head: softmax(q k^T /
    sqrt(H)) with the q and k (RoPE included) and the scale of __call__ (lm.tools.inspect)."""
    q_BTNH, k_BTKH, _ = self._project(x_BTD, positions_BT)
    k_BTNH = jnp.repeat(k_BTKH, self.groups, axis=2)  # query head n reads KV head n // groups
    scale = 1.0 / math.sqrt(q_BTNH.shape[-1])
    logits_BNTS = jnp.einsum('btnh,bsnh->bnts', q_BTNH.astype(jnp.float32),
                             k_BTNH.astype(jnp.float32)) * scale
    logits_BNTS = jnp.where(mask.dense(), logits_BNTS, -jnp.inf)
    return jax.nn.softmax(logits_BNTS, axis=-1)

  def head_outputs(self, x_BTD: jax.Array, positions_BT: jax.Array, mask: AttentionMask
                   ) -> jax.Array:
    """Every query head's output [B, T, N, H], what __call__ then projects with `out`
    (without dropout; lm.tools.prune scores the heads by it)."""
    q_BTNH, k_BTKH, v_BTKH = self._project(x_BTD, positions_BT)
    return self._heads(q_BTNH, k_BTKH, v_BTKH, mask)

  def _project(self, x_BTD: jax.Array, positions_BT: jax.Array, *, row_local: bool = True):
    """q [B, T, N, H], k and v [B, T, K, H], with RoPE applied when configured
    (`row_local`: the positions are 0..T-1 within the row, as `rope` says; decode's are not)."""
    cfg = self.cfg
    b, t, _ = x_BTD.shape
    qkv_BTKGH = self.qkv(x_BTD)
    # lax.split, not three slices: its gradient is one concatenate, where the slices' was
    # three zero-pads summed (a loop fusion that evaluated every pad at every element).
    q_BTKGH, k_BTK1H, v_BTK1H = jax.lax.split(qkv_BTKGH, (self.groups, 1, 1), axis=3)
    q_BTNH = q_BTKGH.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k_BTKH, v_BTKH = k_BTK1H[:, :, :, 0], v_BTK1H[:, :, :, 0]
    if cfg.position == 'rope':
      row_local = row_local and is_concrete_length(t)  # a symbolic one (jax.export) computes
      q_BTNH = rope(q_BTNH, positions_BT, cfg.rope_theta, row_local=row_local)
      k_BTKH = rope(k_BTKH, positions_BT, cfg.rope_theta, row_local=row_local)
    return q_BTNH, k_BTKH, v_BTKH

  def _heads(self, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask) -> jax.Array:
    """o [B, T, N, H] through the implementation `model.attention` resolves to here."""
    impl, _ = choose(self.cfg, jax.default_backend(), q_len=q_BTNH.shape[1],
                     kv_len=k_BSKH.shape[1], self_attention=mask.self_attention)
    return attend(impl, q_BTNH, k_BSKH, v_BSKH, mask)

  def _attend(self, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, dropout_key):
    o_BTNH = self._heads(q_BTNH, k_BSKH, v_BSKH, mask)
    return dropout(self.out(o_BTNH), self.cfg.dropout, dropout_key)
