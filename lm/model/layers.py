"""Small building blocks: parameters with logical axes, projections, norms, dropout.

Every parameter carries `logical_axes` metadata (names such as 'embed', 'mlp'),
never a mesh axis; lm/parallel maps the names to the mesh with the config's rules.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lm.parallel.rules import is_split


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
  """y = x @ W (+ b) over named dims, e.g. spec 'BTD,DNH->BTNH'.

  The contracted dims are x's last and the kernel's first; the kernel's shape and
  logical axes follow the order of its letters in `spec`.
  """

  def __init__(self, spec: str, kernel_shape: tuple[int, ...], kernel_axes: tuple[str, ...],
               *, bias_dims: int, use_bias: bool, std: float, dtype, param_dtype,
               rngs: nnx.Rngs, quant: str = 'none'):
    x_dims, k_dims = spec.split('->')[0].split(',')
    self.n_in = sum(c in x_dims for c in k_dims)  # contracted dims: x's last, W's first
    assert x_dims.endswith(k_dims[:self.n_in]), spec
    self.dtype = dtype
    # quant='int8' (inference, lm.model.quantize): an int8 kernel and a float32 scale per
    # output channel; the matmul reads the int8 kernel and scales its output.
    self.kernel = param(rngs, kernel_shape, kernel_axes, std=std,
                        dtype=jnp.int8 if quant == 'int8' else param_dtype)
    self.kernel_scale = (param(rngs, kernel_shape[self.n_in:], kernel_axes[self.n_in:], std=None,
                               dtype=jnp.float32) if quant == 'int8' else None)
    # The bias covers the kernel's last `bias_dims` (output) dimensions.
    self.bias = (param(rngs, kernel_shape[-bias_dims:], kernel_axes[-bias_dims:], std=0.0,
                       dtype=param_dtype) if use_bias else None)
    self.lora = None  # a LoRA adapter (lm/model/lora.py) when model.lora.rank > 0

  def __call__(self, x: jax.Array) -> jax.Array:
    # One 2-D matmul over flattened dims: on CPU, XLA runs multi-dim dot_generals and
    # their gradients through extra transposes, which cost ~1/3 of a small model's step.
    kernel = self.kernel[...].astype(self.dtype)
    k_in = math.prod(kernel.shape[:self.n_in])
    lead = x.shape[:x.ndim - self.n_in]
    # Under context parallelism the token axis is split: flattening it with the batch axis
    # would make XLA gather every token first, so the leading axes stay as they are.
    rows = (*lead, k_in) if is_split('seq') else (-1, k_in)
    y = (x.astype(self.dtype).reshape(rows) @ kernel.reshape(k_in, -1))
    if self.lora is not None:
      y = y + self.lora(x.reshape(rows))
    y = y.reshape(*lead, *kernel.shape[self.n_in:])
    if self.kernel_scale is not None:
      y = y * self.kernel_scale[...].astype(self.dtype)
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
