"""Small building blocks: parameters with logical axes, projections, norms, dropout.

Every parameter carries `logical_axes` metadata (names such as 'embed', 'mlp'),
never a mesh axis; lm/parallel maps the names to the mesh with the config's rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], *,
          std: float | None, dtype) -> nnx.Param:
  """A parameter: normal(std) init, zeros for std=0, ones for std=None (norm scales)."""
  assert len(shape) == len(axes), (shape, axes)
  if std is None:
    value = jnp.ones(shape, dtype)
  elif std == 0.0:
    value = jnp.zeros(shape, dtype)
  else:
    value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=axes)


class Projection(nnx.Module):
  """y = einsum(x, W) (+ b): a dense layer written as one einsum over named dims.

  `spec` is an einsum string such as 'BTD,DHK->BTHK'; the kernel's shape and
  logical axes are given in the order of its letters in `spec`.
  """

  def __init__(self, spec: str, kernel_shape: tuple[int, ...], kernel_axes: tuple[str, ...],
               *, bias_dims: int, use_bias: bool, std: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.spec = spec
    self.dtype = dtype
    self.kernel = param(rngs, kernel_shape, kernel_axes, std=std, dtype=param_dtype)
    # The bias covers the kernel's last `bias_dims` (output) dimensions.
    self.bias = (param(rngs, kernel_shape[-bias_dims:], kernel_axes[-bias_dims:], std=0.0,
                       dtype=param_dtype) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum(self.spec, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Norm(nnx.Module):
  """RMSNorm (LLaMA) or LayerNorm (GPT-2) over the last axis, computed in float32."""

  def __init__(self, width: int, *, kind: str, eps: float, use_bias: bool, param_dtype,
               rngs: nnx.Rngs):
    self.kind, self.eps = kind, eps
    self.scale = param(rngs, (width,), ('norm',), std=None, dtype=param_dtype)
    self.bias = (param(rngs, (width,), ('norm',), std=0.0, dtype=param_dtype)
                 if kind == 'layernorm' and use_bias else None)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    x = x_BTD.astype(jnp.float32)
    if self.kind == 'layernorm':
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x_BTD.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when rate is 0 or no key is given (evaluation)."""
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
