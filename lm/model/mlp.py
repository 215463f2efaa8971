"""The feed-forward block: SwiGLU (LLaMA) or GELU (GPT-2)."""

from __future__ import annotations

import jax
from flax import nnx

from lm.model.config import ModelConfig
from lm.model.layers import Projection, dropout


class MLP(nnx.Module):
  """x -> down(act(up(x))); for SwiGLU act = silu(gate(x)) * up(x).

  SwiGLU's gate and up projections are one fused kernel [D, F, 2] (one matmul instead
  of two); F stays the outer axis so a tensor-parallel split of 'mlp' keeps each
  unit's gate and up together.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.width, cfg.mlp_dim
    common = dict(use_bias=cfg.use_bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                  rngs=rngs, quant=cfg.weight_quant)
    self.gated = cfg.mlp == 'swiglu'
    if self.gated:
      self.up = Projection('BTD,DFC->BTFC', (d, f, 2), ('embed', 'mlp', None), bias_dims=2,
                           std=cfg.init_std, **common)
    else:
      self.up = Projection('BTD,DF->BTF', (d, f), ('embed', 'mlp'), bias_dims=1,
                           std=cfg.init_std, **common)
    self.down = Projection('BTF,FD->BTD', (f, d), ('mlp', 'embed'), bias_dims=1,
                           std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, **common)
    self.dropout_rate = cfg.dropout

  def __call__(self, x_BTD: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    return dropout(self.down(self.hidden(x_BTD)), self.dropout_rate, dropout_key)

  def hidden(self, x_BTD: jax.Array) -> jax.Array:
    """The activations [B, T, F] that `down` projects back (lm.tools.prune scores them)."""
    if self.gated:
      up_BTFC = self.up(x_BTD)
      return jax.nn.silu(up_BTFC[..., 0]) * up_BTFC[..., 1]
    return jax.nn.gelu(self.up(x_BTD), approximate=True)
