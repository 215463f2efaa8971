"""Mixture of experts: a router, token-choice top-k dispatch with capacity, stacked experts.

Shapes: B rows, T tokens per row, D width, E experts, K experts per token, C expert
slots per row (capacity), F expert hidden size. Tokens are routed per row (one row is
one dispatch group), so a row's result never depends on how the batch is sharded.

Expert parallelism: the experts' weights have a leading 'expert' axis. Dispatched
tokens x_BECD are constrained from rows-over-the-batch-axes to experts-over-the-'expert'
axis ('expert_batch', 'act_expert'), which XLA lowers to an all-to-all; each device then
computes only its own experts and a second all-to-all brings the results back.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lm.model.config import ModelConfig, MoEConfig
from lm.model.layers import dropout, param
from lm.model.mlp import MLP
from lm.model.moe_grouped import ExpertWeights, grouped_moe
from lm.parallel.rules import constrain

DISPATCH_BECD = ('expert_batch', 'act_expert', None, 'act_embed')
MASKED_LOGIT = -1e9  # router logit of an expert outside the token's domain


class Routing(NamedTuple):
  """Where each token goes, and the statistics logged per layer."""

  combine_BTEC: jax.Array  # gate weight of token (b, t) in slot c of expert e (0: not there)
  dispatch_BTEC: jax.Array  # 1.0 where token (b, t) occupies slot c of expert e
  aux: dict[str, jax.Array]  # load_balance, z_loss, dropped_fraction, expert_fraction [E]


def capacity(moe: MoEConfig, tokens_per_row: int) -> int:
  """Expert slots per row: ceil(capacity_factor * T * K / R), or T when dropless.

  R is the experts a token can reach: all E for learned routing, the E / num_domains of
  its domain otherwise (a packed row holds one domain, so its tokens share R experts).
  """
  if moe.capacity_factor == 0:
    return tokens_per_row  # an expert gets each token at most once, so nothing can drop
  k = moe.experts_per_token
  reach = moe.num_experts if moe.routing == 'learned' else moe.num_experts // moe.num_domains
  return max(1, min(tokens_per_row, math.ceil(moe.capacity_factor * tokens_per_row * k / reach)))


def choose_experts(moe: MoEConfig, logits_BTE: jax.Array | None, domains_BT: jax.Array | None,
                   shape_BT: tuple[int, int]) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """(expert ids [B, T, K], gates [B, T, K], router probabilities [B, T, E] or None)."""
  e = moe.num_experts
  if domains_BT is None:
    domains_BT = jnp.zeros(shape_BT, jnp.int32)  # a run without domain labels: domain 0
  if moe.routing == 'domain':
    per = e // moe.num_domains
    experts_BTK = domains_BT[..., None] * per + jnp.arange(per, dtype=jnp.int32)
    gates_BTK = jnp.full(experts_BTK.shape, 1.0 / per, jnp.float32)
    return experts_BTK, gates_BTK, None
  if moe.routing == 'domain+learned':
    per = e // moe.num_domains
    owned_BTE = (jnp.arange(e) // per) == domains_BT[..., None]
    logits_BTE = jnp.where(owned_BTE, logits_BTE, MASKED_LOGIT)
  probs_BTE = jax.nn.softmax(logits_BTE, axis=-1)
  gates_BTK, experts_BTK = jax.lax.top_k(probs_BTE, moe.top_k)
  if moe.top_k > 1:  # the chosen experts' weights sum to 1 (GShard); top-1 keeps p (Switch)
    gates_BTK = gates_BTK / jnp.sum(gates_BTK, axis=-1, keepdims=True)
  return experts_BTK, gates_BTK, probs_BTE


def row_slots(experts_BTK: jax.Array, num_experts: int) -> jax.Array:
  """The slot [B, T, K] each assignment takes in its expert, counted per row: a row's first
  choices fill the slots in token order, then its second choices."""
  b, t, k = experts_BTK.shape
  assign_BTKE = jax.nn.one_hot(experts_BTK, num_experts, dtype=jnp.int32)
  assign_BSE = jnp.swapaxes(assign_BTKE, 1, 2).reshape(b, k * t, num_experts)
  slot_BSE = jnp.cumsum(assign_BSE, axis=1) - 1
  return jnp.sum(jnp.swapaxes(slot_BSE.reshape(b, k, t, num_experts), 1, 2) * assign_BTKE,
                 axis=-1)


def kept_assignments(moe: MoEConfig, experts_BTK: jax.Array) -> jax.Array:
  """Which assignments [B, T, K] fit their expert's capacity (all of them when dropless)."""
  b, t, _ = experts_BTK.shape
  if moe.capacity_factor == 0:
    return jnp.ones(experts_BTK.shape, bool)
  return row_slots(experts_BTK, moe.num_experts) < capacity(moe, t)


def routing_aux(moe: MoEConfig, experts_BTK, kept_BTK, probs_BTE, logits_BTE
                ) -> dict[str, jax.Array]:
  """The statistics logged per layer and the auxiliary losses, from the assignments."""
  e = moe.num_experts
  assign_BTKE = jax.nn.one_hot(experts_BTK, e, dtype=jnp.float32)
  expert_fraction_E = jnp.mean(assign_BTKE, axis=(0, 1, 2))
  aux = {'dropped_fraction': 1.0 - jnp.mean(kept_BTK.astype(jnp.float32)),
         'expert_fraction': expert_fraction_E}
  if probs_BTE is None:  # fixed domain routing: no router to balance
    aux['load_balance'] = jnp.zeros((), jnp.float32)
    aux['z_loss'] = jnp.zeros((), jnp.float32)
  else:
    # Switch Transformer: E * sum_e (fraction of assignments to e) * (mean probability of e).
    aux['load_balance'] = e * jnp.sum(expert_fraction_E * jnp.mean(probs_BTE, axis=(0, 1)))
    # ST-MoE router z-loss: mean squared log-partition of the router logits.
    aux['z_loss'] = jnp.mean(jnp.square(jax.nn.logsumexp(logits_BTE, axis=-1)))
  return aux


def route(moe: MoEConfig, logits_BTE: jax.Array | None, domains_BT: jax.Array | None,
          shape_BT: tuple[int, int]) -> Routing:
  """Token-choice routing with a per-row capacity as one-hot dispatch and combine tensors
  (model.moe.impl='dispatch'): assignments past capacity (row_slots) are dropped."""
  t = shape_BT[1]
  e = moe.num_experts
  experts_BTK, gates_BTK, probs_BTE = choose_experts(moe, logits_BTE, domains_BT, shape_BT)
  c = capacity(moe, t)
  slot_BTK = row_slots(experts_BTK, e)
  kept_BTK = slot_BTK < c
  assign_BTKE = jax.nn.one_hot(experts_BTK, e, dtype=jnp.float32)
  slot_onehot_BTKC = jax.nn.one_hot(jnp.where(kept_BTK, slot_BTK, c), c, dtype=jnp.float32)
  place_BTKEC = assign_BTKE[..., None] * slot_onehot_BTKC[..., None, :]
  dispatch_BTEC = jnp.sum(place_BTKEC, axis=2)
  combine_BTEC = jnp.einsum('BTKEC,BTK->BTEC', place_BTKEC, gates_BTK)
  return Routing(combine_BTEC, dispatch_BTEC,
                 routing_aux(moe, experts_BTK, kept_BTK, probs_BTE, logits_BTE))


class MoE(nnx.Module):
  """A drop-in for MLP: routes each token to experts (SwiGLU or GELU, like the MLP)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    moe = self.moe = cfg.moe
    e, d, f = moe.num_experts, cfg.width, moe.expert_mlp_dim or cfg.mlp_dim
    pdt = cfg.jnp_param_dtype
    self.dtype = cfg.jnp_dtype
    self.gated = cfg.mlp == 'swiglu'
    self.router = (param(rngs, (d, e), ('embed', None), std=cfg.init_std, dtype=jnp.float32)
                   if moe.routing != 'domain' else None)
    if self.gated:
      self.up = param(rngs, (e, d, f, 2), ('expert', 'embed', 'mlp', None), std=cfg.init_std,
                      dtype=pdt)
    else:
      self.up = param(rngs, (e, d, f), ('expert', 'embed', 'mlp'), std=cfg.init_std, dtype=pdt)
    self.down = param(rngs, (e, f, d), ('expert', 'mlp', 'embed'),
                      std=cfg.init_std / (2 * cfg.num_layers) ** 0.5, dtype=pdt)
    up_bias_shape = (e, f, 2) if self.gated else (e, f)
    self.up_bias = (param(rngs, up_bias_shape, ('expert', 'mlp', None)[:len(up_bias_shape)],
                          std=0.0, dtype=pdt) if cfg.use_bias else None)
    self.down_bias = (param(rngs, (e, d), ('expert', 'embed'), std=0.0, dtype=pdt)
                      if cfg.use_bias else None)
    self.shared = MLP(cfg, rngs=rngs) if moe.shared_expert else None
    self.dropout_rate = cfg.dropout
    self.kernel = None  # grouped matmul kernel: None picks by backend (moe_grouped.py)

  def router_logits(self, x_BTD: jax.Array) -> jax.Array | None:
    if self.router is None:
      return None
    b, t, d = x_BTD.shape
    return (x_BTD.astype(jnp.float32).reshape(b * t, d) @ self.router[...]).reshape(b, t, -1)

  def experts(self, x_BECD: jax.Array) -> jax.Array:
    """Every expert's MLP on its own slots: [B, E, C, D] -> [B, E, C, D]."""
    up = self.up[...].astype(self.dtype)
    if self.gated:
      up_BECFG = jnp.einsum('BECD,EDFG->BECFG', x_BECD, up)
      if self.up_bias is not None:
        up_BECFG = up_BECFG + self.up_bias[...].astype(self.dtype)[None, :, None]
      h_BECF = jax.nn.silu(up_BECFG[..., 0]) * up_BECFG[..., 1]
    else:
      h_BECF = jnp.einsum('BECD,EDF->BECF', x_BECD, up)
      if self.up_bias is not None:
        h_BECF = h_BECF + self.up_bias[...].astype(self.dtype)[None, :, None]
      h_BECF = jax.nn.gelu(h_BECF, approximate=True)
    y_BECD = jnp.einsum('BECF,EFD->BECD', h_BECF, self.down[...].astype(self.dtype))
    if self.down_bias is not None:
      y_BECD = y_BECD + self.down_bias[...].astype(self.dtype)[None, :, None]
    return y_BECD

  def __call__(self, x_BTD: jax.Array, domains_BT: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(output [B, T, D], this layer's routing statistics and auxiliary losses)."""
    b, t, _ = x_BTD.shape
    x_BTD = x_BTD.astype(self.dtype)
    if self.moe.impl == 'grouped':
      y_BTD, aux = self.grouped(x_BTD, domains_BT)
    else:
      y_BTD, aux = self.dispatch(x_BTD, domains_BT)
    if self.shared is not None:
      y_BTD = y_BTD + self.shared(x_BTD)
    return dropout(y_BTD, self.dropout_rate, dropout_key), aux

  def grouped(self, x_BTD, domains_BT):
    """Expert-sorted rows through a grouped matmul (lm/model/moe_grouped.py)."""
    b, t, _ = x_BTD.shape
    logits_BTE = self.router_logits(x_BTD)
    experts_BTK, gates_BTK, probs_BTE = choose_experts(self.moe, logits_BTE, domains_BT, (b, t))
    kept_BTK = kept_assignments(self.moe, experts_BTK)
    gates_BTK = jnp.where(kept_BTK, gates_BTK, 0.0)
    e, cast = self.moe.num_experts, lambda p: p[...].astype(self.dtype)
    w = ExpertWeights(
        up=cast(self.up).reshape(e, self.up.shape[1], -1), down=cast(self.down),
        up_bias=None if self.up_bias is None else cast(self.up_bias).reshape(e, -1),
        down_bias=None if self.down_bias is None else cast(self.down_bias))
    y_BTD = grouped_moe(x_BTD, experts_BTK, gates_BTK, kept_BTK, w, gated=self.gated,
                        capacity=capacity(self.moe, t), kernel=self.kernel)
    y_BTD = constrain(y_BTD, ('batch', 'seq', 'act_embed'))
    return y_BTD, routing_aux(self.moe, experts_BTK, kept_BTK, probs_BTE, logits_BTE)

  def dispatch(self, x_BTD, domains_BT):
    """One-hot dispatch to [B, E, C] slots and back (GShard), T * E * C work."""
    b, t, _ = x_BTD.shape
    routing = route(self.moe, self.router_logits(x_BTD), domains_BT, (b, t))
    x_BECD = jnp.einsum('BTEC,BTD->BECD', routing.dispatch_BTEC.astype(self.dtype), x_BTD)
    x_BECD = constrain(x_BECD, DISPATCH_BECD)  # rows -> experts: an all-to-all
    y_BECD = constrain(self.experts(x_BECD), DISPATCH_BECD)
    y_BTD = jnp.einsum('BTEC,BECD->BTD', routing.combine_BTEC.astype(self.dtype), y_BECD)
    y_BTD = constrain(y_BTD, ('batch', 'seq', 'act_embed'))  # experts -> rows
    return y_BTD, routing.aux
