"""The feed-forward block: SwiGLU (LLaMA) or GELU (GPT-2)."""

from __future__ import annotations

import jax
from flax import nnx

from lm.model.config import ModelConfig
from lm.model.layers import Projection, dropout


class MLP(nnx.Module):
  """x -> down(act(up(x))) with act = silu(gate(x)) * up(x) for SwiGLU."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.width, cfg.mlp_dim
    common = dict(use_bias=cfg.use_bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                  rngs=rngs, bias_dims=1)
    self.up = Projection('BTD,DF->BTF', (d, f), ('embed', 'mlp'), std=cfg.init_std, **common)
    self.gate = (Projection('BTD,DF->BTF', (d, f), ('embed', 'mlp'), std=cfg.init_std, **common)
                 if cfg.mlp == 'swiglu' else None)
    self.down = Projection('BTF,FD->BTD', (f, d), ('mlp', 'embed'),
                           std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, **common)
    self.dropout_rate = cfg.dropout

  def __call__(self, x_BTD: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    if self.gate is not None:
      h_BTF = jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD)
    else:
      h_BTF = jax.nn.gelu(self.up(x_BTD), approximate=True)
    return dropout(self.down(h_BTF), self.dropout_rate, dropout_key)
