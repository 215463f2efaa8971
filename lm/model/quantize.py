"""int8 weight-only quantization of a trained model (per-output-channel scales).

`quantize(model_def, params, 'int8')` returns a ModelDef whose ModelConfig says
`weight_quant='int8'` and its parameters: every matmul weight (attention and MLP
projections, the embedding, the output matrix) becomes an int8 array plus a float32
scale per output channel (per vocabulary row for the embedding), w ~= q * scale. The
int8 arrays are what the device holds; the model multiplies by q cast to the compute
dtype and scales the matmul's output, inside the jit'd computation, so weight memory
(and the bytes a decode step reads) shrinks about 4x against float32. Norm scales,
biases and learned position tables stay in their float dtype.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.model.definition import ModelDef

MODES = ('none', 'int8')
INT8_MAX = 127
# quantized parameter name -> the name of its scale; contracted (input) axes per name below
SCALES = {'kernel': 'kernel_scale', 'embed': 'embed_scale', 'unembed': 'unembed_scale'}


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise UserError(f'quantize={mode!r} is not one of {", ".join(MODES)}')


def quantize_array(w: jax.Array, reduce_axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Symmetric int8: scale = max |w| over `reduce_axes` / 127 (one per output channel);
  returns (q int8 of w's shape, scale float32 without the reduced axes)."""
  w = w.astype(jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=reduce_axes, keepdims=True) / INT8_MAX
  scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero channel stays zero
  q = jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
  return q, jnp.squeeze(scale, reduce_axes)


def _reduce_axes(path: tuple[str, ...], name: str, ndim: int, scale_ndim: int) -> tuple[int, ...]:
  """The contracted axes of a weight: the embedding's width (rows are looked up, and in a
  tied model they are the output channels), the output matrix's width, and a projection
  kernel's leading input dims after the stacked 'layers' axis."""
  if name == 'embed':
    return (1,)
  if name == 'unembed':
    return (0,)
  first = 1 if path and path[0] == 'blocks' else 0  # blocks are stacked on a 'layers' axis
  return tuple(range(first, first + ndim - scale_ndim))


def quantize(model_def: ModelDef, params: dict, mode: str = 'int8') -> tuple[ModelDef, dict]:
  """(ModelDef, params) of the model with int8 weights; mode 'none' returns them as given.

  The new arrays are placed like the float weights they replace when those are on one
  device; callers that shard (lm.infer.sharding.shard_params) place them afterwards.
  """
  check_mode(mode)
  if mode == 'none' or model_def.cfg.quantized:
    return model_def, params
  qdef = ModelDef.create(dataclasses.replace(model_def.cfg, weight_quant=mode))
  shapes = jax.eval_shape(qdef.init_params, jax.random.key(0))
  quantize_jit = jax.jit(quantize_array, static_argnums=1)

  def walk(src: dict, like: dict, path: tuple[str, ...]) -> dict:
    out = {}
    for name, shape in like.items():
      if isinstance(shape, dict):
        out[name] = walk(src[name], shape, path + (name,))
      elif name in SCALES and shape.dtype == jnp.int8:
        scale_shape = like[SCALES[name]]
        axes = _reduce_axes(path, name, len(shape.shape), len(scale_shape.shape))
        q, scale = quantize_jit(src[name], axes)
        assert q.shape == shape.shape and scale.shape == scale_shape.shape, (path, name)
        out[name], out[SCALES[name]] = q, scale
      elif name not in SCALES.values():
        out[name] = src[name]
    return out

  return qdef, walk(params, shapes, ())


def weight_bytes(params: dict) -> int:
  """Bytes of all parameter arrays (each counted once, however it is sharded)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
