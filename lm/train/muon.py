"""Muon for the weight matrices, AdamW for everything else, as one optax transformation.

Muon (Jordan et al. 2024) keeps a momentum of each matrix's gradient and steps along its
orthogonalisation: the quintic Newton-Schulz iteration drives the singular values of the
(Nesterov) momentum towards 1, so every direction of the matrix moves by a similar amount.
Embeddings, norm scales, biases, the output head and the MoE router are not matrices in
that sense (a lookup table, vectors, a classifier) and get AdamW, as in modded-nanogpt and
MaxText.

The state is (count, mu, nu) with mu and nu shaped like the parameters (nu stays zero on
the matrices), so it takes the parameters' shardings and checkpoints like AdamW's. Stacked
layer weights [layers, ...] are orthogonalised per layer (and per expert).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lm import parallel

# The quintic's coefficients: the steepest slope at 0 that still keeps the iteration's
# singular values in about [0.7, 1.2] after 5 steps (Jordan et al.).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
BATCH_AXES = ('layers', 'expert')  # stacked copies of a matrix, each orthogonalised alone
ADAM_ONLY = ('router',)  # matrices of the blocks that stay on AdamW


class MatrixDims(NamedTuple):
  """Which axes of a parameter are the stacked copies, the matrix's input and its output."""
  batch: tuple[int, ...]
  reduction: tuple[int, ...]
  output: tuple[int, ...]


def newton_schulz(x_MN: jax.Array, steps: int = NS_STEPS, eps: float = 1e-7) -> jax.Array:
  """The approximate orthogonalisation U V^T of a matrix U S V^T: X / |X|_F, then `steps`
  times X <- a X + (b A + c A A) X with A = X X^T (on the wider orientation)."""
  a, b, c = NS_COEFFS
  tall = x_MN.shape[0] > x_MN.shape[1]
  x = (x_MN.T if tall else x_MN).astype(jnp.float32)
  x = x / (jnp.linalg.norm(x) + eps)
  for _ in range(steps):
    a_MM = x @ x.T
    x = a * x + (b * a_MM + c * a_MM @ a_MM) @ x
  return (x.T if tall else x).astype(x_MN.dtype)


def orthogonalize(x: jax.Array, dims: MatrixDims, steps: int = NS_STEPS) -> jax.Array:
  """newton_schulz (`steps` iterations) of each matrix in `x` (reduction axes x output
  axes, per batch index), scaled by sqrt(max(1, fan_out / fan_in)) so wide and tall
  matrices move alike."""
  order = dims.batch + dims.reduction + dims.output
  moved = jnp.transpose(x, order)
  fan_in = math.prod(x.shape[i] for i in dims.reduction)
  fan_out = math.prod(x.shape[i] for i in dims.output)
  batch_shape = moved.shape[:len(dims.batch)]
  flat_NIO = moved.reshape((math.prod(batch_shape), fan_in, fan_out))
  # The stacked matrices split over the data-parallel devices (the 'batch' rule), as
  # modded-nanogpt's ranks share them: each device orthogonalises its share and XLA
  # gathers the updates, instead of every replica repeating every iteration. A stack the
  # devices do not divide stays whole (logical_to_spec), as without rules.
  flat_NIO = parallel.constrain(flat_NIO, ('batch', None, None))
  out = jax.vmap(lambda x_MN: newton_schulz(x_MN, steps))(flat_NIO).reshape(moved.shape)
  out = out * math.sqrt(max(1.0, fan_out / fan_in))
  return jnp.transpose(out, [order.index(i) for i in range(x.ndim)])


def matrix_dims(logical_axes) -> dict:
  """Per parameter (the tree of the model's logical axes): its MatrixDims when Muon updates
  it, else None. A matrix is a weight of the layer stack ('blocks') with a reduction and an
  output axis besides the stacked ones; when 'embed' is its last axis it is the output
  (attention's out, the MLP's down projection), else its first free axis is the input."""
  def dims(path, names):
    keys = [str(getattr(p, 'key', p)) for p in path]
    if keys[0] != 'blocks' or any(k in ADAM_ONLY for k in keys):
      return None
    expert_weight = keys[-2] == 'mlp' and keys[-1] in ('up', 'down')  # MoE [.., expert, ..]
    if keys[-1] != 'kernel' and not expert_weight:  # norm scales, biases, LoRA adapters
      return None
    batch = tuple(i for i, n in enumerate(names) if n in BATCH_AXES)
    free = [i for i in range(len(names)) if i not in batch]
    if len(free) < 2:
      return None
    if names[free[-1]] == 'embed':
      return MatrixDims(batch, tuple(free[:-1]), (free[-1],))
    return MatrixDims(batch, (free[0],), tuple(free[1:]))
  return jax.tree_util.tree_map_with_path(dims, logical_axes,
                                          is_leaf=lambda x: isinstance(x, tuple))


class MuonAdamState(NamedTuple):
  count: jax.Array  # [] int32: updates applied so far
  mu: optax.Updates  # Muon's momentum (matrices) / Adam's first moment (the rest)
  nu: optax.Updates  # Adam's second moment (zero on the matrices)


def muon_adamw(schedule: optax.Schedule, *, lr: float, muon_lr: float, dims: dict,
               momentum: float, b1: float, b2: float, eps: float, weight_decay: float,
               mask=None, ns_steps: int = NS_STEPS) -> optax.GradientTransformation:
  """Muon on the leaves `dims` gives MatrixDims for, AdamW elsewhere. `schedule` is the
  AdamW learning rate; the matrices follow the same shape scaled to peak `muon_lr`.
  Weight decay (decoupled, times each part's learning rate) applies where `mask` (a tree
  or a function of the parameters, as optax.adamw's) is True. `ns_steps`: Newton-Schulz
  iterations per update."""
  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return MuonAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('muon_adamw needs the parameters (weight decay)')
    count = state.count + 1
    adam_lr = schedule(state.count)
    matrix_lr = adam_lr * (muon_lr / lr)
    decayed = mask(params) if callable(mask) else mask
    if decayed is None:
      decayed = jax.tree.map(lambda _: True, params)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)

    def leaf(g, m, v, p, d, wd_on):
      wd = weight_decay if wd_on else 0.0
      g32 = g.astype(jnp.float32)
      if d is None:
        m = b1 * m + (1 - b1) * g32
        v = b2 * v + (1 - b2) * g32 * g32
        step = (m / c1) / (jnp.sqrt(v / c2) + eps) + wd * p
        return (-adam_lr * step).astype(p.dtype), m.astype(g.dtype), v.astype(g.dtype)
      m = momentum * m + (1 - momentum) * g32
      nesterov = (1 - momentum) * g32 + momentum * m
      step = orthogonalize(nesterov, d, ns_steps) + wd * p
      return (-matrix_lr * step).astype(p.dtype), m.astype(g.dtype), v

    flat_dims = jax.tree.leaves(dims, is_leaf=lambda x: x is None or isinstance(x, MatrixDims))
    leaves, treedef = jax.tree.flatten(grads)
    args = zip(leaves, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu),
               treedef.flatten_up_to(params), flat_dims, treedef.flatten_up_to(decayed),
               strict=True)
    out = [leaf(*a) for a in args]
    updates, mu, nu = (treedef.unflatten([o[i] for o in out]) for i in range(3))
    return updates, MuonAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)
