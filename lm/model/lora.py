"""LoRA adapters on the model's projections: y = x @ W + (alpha / r) * dropout(x) @ A @ B.

A [in, r] starts random and B [r, out] at zero, so a freshly adapted model computes
exactly what its base does. `merge_lora` folds the adapters into the base kernels
(for export); `is_lora` tells the optimizer which parameters to train.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lm.model.layers import Projection, dropout

# lora.targets name -> (sub-module, projection attribute) of a Block
TARGETS = {'qkv': ('attn', 'qkv'), 'out': ('attn', 'out'), 'mlp_in': ('mlp', 'up'),
           'mlp_out': ('mlp', 'down')}
A, B = 'lora_a', 'lora_b'


class LoRA(nnx.Module):
  """The low-rank update of one projection, on flattened in/out dims: [in, r] @ [r, out]."""

  dropout_key: jax.Array | None = None  # bound per call by `bind_dropout` (training only)

  def __init__(self, d_in: int, d_out: int, *, rank: int, alpha: float, rate: float, dtype,
               param_dtype, rngs: nnx.Rngs):
    self.scale = alpha / rank
    self.rate = rate
    self.dtype = dtype
    # Kaiming-uniform-like scale for A (as the LoRA paper's reference code), zeros for B.
    a_init = jax.random.normal(rngs.params(), (d_in, rank), jnp.float32) / math.sqrt(d_in)
    self.lora_a = nnx.Param(a_init.astype(param_dtype), logical_axes=(None, None))
    self.lora_b = nnx.Param(jnp.zeros((rank, d_out), param_dtype), logical_axes=(None, None))

  def __call__(self, x_NI: jax.Array) -> jax.Array:
    x_NI = dropout(x_NI.astype(self.dtype), self.rate, self.dropout_key)
    a_IR = self.lora_a[...].astype(self.dtype)
    b_RO = self.lora_b[...].astype(self.dtype)
    return (x_NI @ a_IR) @ b_RO * self.scale


def add_adapters(block: nnx.Module, cfg, rngs: nnx.Rngs) -> None:
  """Gives the projections `cfg.lora_targets` of one Block a LoRA (called in Block.__init__)."""
  for target in cfg.lora_targets:
    module, attr = TARGETS[target]
    proj: Projection = getattr(getattr(block, module), attr)
    shape = proj.kernel.shape
    d_in, d_out = math.prod(shape[:proj.n_in]), math.prod(shape[proj.n_in:])
    # nnx.data: Projection declares `lora = None`, which nnx would otherwise keep static.
    proj.lora = nnx.data(LoRA(d_in, d_out, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                              rate=cfg.lora_dropout, dtype=cfg.jnp_dtype,
                              param_dtype=cfg.jnp_param_dtype, rngs=rngs))


def bind_dropout(block: nnx.Module, key: jax.Array | None) -> None:
  """Hands each adapter of a (freshly merged, per-layer) Block its own dropout key."""
  if key is None:
    return
  for i, target in enumerate(TARGETS):
    module, attr = TARGETS[target]
    lora = getattr(getattr(getattr(block, module), attr), 'lora', None)
    if lora is not None and lora.rate > 0:
      # A plain attribute, not nnx state: the block is rebuilt for every call.
      object.__setattr__(lora, 'dropout_key', jax.random.fold_in(key, 1000 + i))


def is_lora(path) -> bool:
  """True for the adapter matrices in a parameter path (a tuple of keys/names)."""
  return any(str(getattr(p, 'key', p)) in (A, B) for p in path)


def merge_params(params: dict, scale: float) -> dict:
  """`params` (a pure dict) with W += scale * A @ B for every adapted projection, and
  the 'lora' entries dropped. Stacked layers ([L, ...]) are merged layer by layer."""
  def walk(node):
    if not isinstance(node, dict):
      return node
    out = {k: walk(v) for k, v in node.items() if k != 'lora'}
    lora = node.get('lora')
    if isinstance(lora, dict) and A in lora and 'kernel' in node:
      kernel = node['kernel']
      a, b = lora[A], lora[B]
      delta = jnp.einsum('...ir,...ro->...io', a.astype(jnp.float32), b.astype(jnp.float32))
      out['kernel'] = (kernel.astype(jnp.float32)
                       + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)
    return out
  return walk(params)


def count(params: dict) -> tuple[int, int]:
  """(adapter parameters, all parameters) of a pure parameter dict."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total = sum(math.prod(leaf.shape) for _, leaf in leaves)
  adapters = sum(math.prod(leaf.shape) for p, leaf in leaves if is_lora(p))
  return adapters, total
