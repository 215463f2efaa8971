"""The sequence-classification head: pool one position's hidden state, then a linear layer.

A causal model pools each row's last real token (the only one that has seen the whole
text); a bidirectional encoder pools the first token (the [bos] / [CLS] position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm.model.layers import param


def pooled_index(lengths_B: jax.Array, causal: bool) -> jax.Array:
  """[B] the position pooled per row: its last real token (causal) or the first (encoder)."""
  return jnp.maximum(lengths_B - 1, 0) if causal else jnp.zeros_like(lengths_B)


class ClassifierHead(nnx.Module):
  """h [B, T, D] (final-normed) and row lengths [B] -> class logits [B, C]."""

  def __init__(self, width: int, num_classes: int, *, causal: bool, std: float, param_dtype,
               rngs: nnx.Rngs):
    self.causal = causal
    self.kernel = param(rngs, (width, num_classes), ('embed', None), std=std, dtype=param_dtype)
    self.bias = param(rngs, (num_classes,), (None,), std=0.0, dtype=param_dtype)

  def __call__(self, h_BTD: jax.Array, lengths_B: jax.Array) -> jax.Array:
    index_B = pooled_index(lengths_B, self.causal)
    pooled_BD = jnp.take_along_axis(h_BTD, index_B[:, None, None], axis=1)[:, 0]
    logits_BC = pooled_BD.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32)
    return logits_BC + self.bias[...].astype(jnp.float32)
