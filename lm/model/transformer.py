"""The decoder Transformer: embeddings, a scanned stack of blocks, the LM head.

All layers' parameters live stacked on a leading 'layers' axis (one checkpoint
layout) and are applied with `jax.lax.scan`, so compile time does not grow with depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm.model import lora
from lm.model.attention import Attention, attention_mask, cache_attention_mask
from lm.model.config import ModelConfig
from lm.model.heads import ClassifierHead
from lm.model.layers import Norm, dropout, param
from lm.model.mlp import MLP
from lm.model.moe import MoE
from lm.parallel.rules import constrain

ACT_BTD = ('batch', 'seq', 'act_embed')
REMAT_POLICIES = {
    'full': None,  # save nothing, recompute the block in the backward pass
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, moe: bool = False):
    norm = dict(kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.attn_norm = Norm(cfg.width, **norm)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = Norm(cfg.width, **norm)
    self.mlp = MoE(cfg, rngs=rngs) if moe else MLP(cfg, rngs=rngs)
    if cfg.lora_rank:
      lora.add_adapters(self, cfg, rngs)

  def __call__(self, x_BTD, positions_BT, mask_B1TT, dropout_key=None):
    lora.bind_dropout(self, dropout_key)
    k_attn, k_mlp = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), positions_BT, mask_B1TT, k_attn)
    x_BTD = constrain(x_BTD, ACT_BTD)
    x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD), k_mlp)
    return constrain(x_BTD, ACT_BTD)

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH):
    """The block over a KV cache (no dropout): returns (x, k cache, v cache)."""
    a_BTD, k_BSKH, v_BSKH = self.attn.decode(self.attn_norm(x_BTD), positions_BT, mask_B1TS,
                                             k_BSKH, v_BSKH)
    x_BTD = constrain(x_BTD + a_BTD, ACT_BTD)
    x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
    return constrain(x_BTD, ACT_BTD), k_BSKH, v_BSKH


class LayerGroup(nnx.Module):
  """`moe.every` consecutive layers, the last with a mixture of experts: the unit that is
  stacked and scanned when the model has experts (every=1: each layer is one MoE block)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.num_dense = cfg.moe.every - 1
    for i in range(self.num_dense):
      setattr(self, f'dense_{i}', Block(cfg, rngs=rngs))
    self.moe = Block(cfg, rngs=rngs, moe=True)

  def __call__(self, x_BTD, positions_BT, mask_B1TT, domains_BT, dropout_key=None):
    keys = ([None] * (self.num_dense + 2) if dropout_key is None else
            list(jax.random.split(dropout_key, self.num_dense + 2)))
    for i in range(self.num_dense):
      x_BTD = getattr(self, f'dense_{i}')(x_BTD, positions_BT, mask_B1TT, keys[i])
    block = self.moe
    x_BTD = x_BTD + block.attn(block.attn_norm(x_BTD), positions_BT, mask_B1TT, keys[-2])
    x_BTD = constrain(x_BTD, ACT_BTD)
    y_BTD, aux = block.mlp(block.mlp_norm(x_BTD), domains_BT, keys[-1])
    return constrain(x_BTD + y_BTD, ACT_BTD), aux

  def decode(self, x_BTD, positions_BT, mask_B1TS, k_GBSKH, v_GBSKH, domains_BT=None):
    """The group over its layers' KV caches [every, B, S, K, H]."""
    ks, vs = [], []
    for i in range(self.num_dense):
      x_BTD, k, v = getattr(self, f'dense_{i}').decode(x_BTD, positions_BT, mask_B1TS,
                                                       k_GBSKH[i], v_GBSKH[i])
      ks.append(k)
      vs.append(v)
    block = self.moe
    a_BTD, k, v = block.attn.decode(block.attn_norm(x_BTD), positions_BT, mask_B1TS,
                                    k_GBSKH[-1], v_GBSKH[-1])
    x_BTD = constrain(x_BTD + a_BTD, ACT_BTD)
    y_BTD, _ = block.mlp(block.mlp_norm(x_BTD), domains_BT)
    return constrain(x_BTD + y_BTD, ACT_BTD), jnp.stack(ks + [k]), jnp.stack(vs + [v])


def stacked_layer(cfg: ModelConfig) -> tuple[type[nnx.Module], int]:
  """The module stacked on the 'layers' axis and how many of it: Block x num_layers, or
  LayerGroup x num_layers / moe.every for a mixture of experts."""
  if cfg.moe.enabled:
    return LayerGroup, cfg.num_layers // cfg.moe.every
  return Block, cfg.num_layers


class Transformer(nnx.Module):
  """tokens [B, T] -> logits [B, T, V], with packed documents kept apart by segment ids."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = cfg.jnp_param_dtype
    wdt = jnp.int8 if cfg.quantized else pdt  # int8 + a scale per vocab row (lm.model.quantize)
    self.embed = param(rngs, (cfg.vocab_size, cfg.width), ('vocab', 'embed'), std=cfg.init_std,
                       dtype=wdt)
    self.embed_scale = (param(rngs, (cfg.vocab_size,), ('vocab',), std=None, dtype=jnp.float32)
                        if cfg.quantized else None)
    self.pos_embed = (param(rngs, (cfg.max_len, cfg.width), (None, 'embed'), std=cfg.init_std,
                            dtype=pdt) if cfg.position == 'learned' else None)
    # Build one block per layer key and stack their parameters on a leading axis.
    layer_cls, num_stacked = stacked_layer(cfg)
    layer_keys = jax.random.split(rngs.params(), num_stacked)
    block_def = nnx.graphdef(nnx.eval_shape(lambda: layer_cls(cfg, rngs=nnx.Rngs(0))))
    stacked = jax.vmap(lambda k: nnx.state(layer_cls(cfg, rngs=nnx.Rngs(params=k))))(layer_keys)
    self.blocks = nnx.merge(block_def, stacked)
    self.final_norm = Norm(cfg.width, kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                           param_dtype=pdt, rngs=rngs)
    self.unembed = (None if cfg.tie_embeddings else
                    param(rngs, (cfg.width, cfg.vocab_size), ('embed', 'vocab'),
                          std=cfg.init_std, dtype=wdt))
    self.unembed_scale = (param(rngs, (cfg.vocab_size,), ('vocab',), std=None, dtype=jnp.float32)
                          if cfg.quantized and not cfg.tie_embeddings else None)
    self.unembed_bias = (param(rngs, (cfg.vocab_size,), ('vocab',), std=0.0, dtype=pdt)
                         if cfg.use_bias and not cfg.tie_embeddings else None)
    self.classifier = (ClassifierHead(cfg.width, cfg.num_classes, causal=cfg.causal,
                                      std=cfg.init_std, param_dtype=pdt, rngs=rngs)
                       if cfg.num_classes else None)

  def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None,
               segment_ids_BT: jax.Array | None = None, *,
               dropout_key: jax.Array | None = None, domains_BT: jax.Array | None = None,
               return_aux: bool = False):
    """Logits [B, T, V]; with `return_aux`, (logits, aux) where aux holds each MoE layer's
    statistics stacked on a leading layer axis ({} for a dense model). `domains_BT` are
    the tokens' domain ids, which domain routing needs (default: domain 0)."""
    x_BTD, aux = self._hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_key, domains_BT)
    logits_BTV = self._logits(x_BTD)
    return (logits_BTV, aux) if return_aux else logits_BTV

  def classify(self, tokens_BT: jax.Array, positions_BT: jax.Array,
               segment_ids_BT: jax.Array, lengths_B: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Class logits [B, C] of one example per row (`lengths_B` real tokens, then padding)."""
    if self.classifier is None:
      raise ValueError('this model has no classification head; set model.num_classes > 0')
    x_BTD, _ = self._hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_key, None)
    return self.classifier(self.final_norm(x_BTD), lengths_B)

  def decode(self, tokens_BT: jax.Array, positions_BT: jax.Array,
             cache: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits of `tokens_BT` at `positions_BT`, reading and filling a KV cache.

    `cache` is {'k', 'v'}: [layers, B, S, K, H] where slot s of a row holds position s.
    One call can prefill a whole (right-padded) prompt or feed one token per row; a token
    at position p attends to slots 0..p. Returns (logits [B, T, V], updated cache).
    """
    x_BTD = constrain(self._embed(tokens_BT, positions_BT), ACT_BTD)
    mask_B1TS = cache_attention_mask(positions_BT, cache['k'].shape[2])
    block_def, stacked = nnx.split(self.blocks)
    if self.cfg.moe.enabled:
      return self._decode_groups(x_BTD, positions_BT, mask_B1TS, cache)

    def body(x_BTD, layer):
      layer_state, k_BSKH, v_BSKH = layer
      block = nnx.merge(block_def, layer_state)
      x_BTD, k_BSKH, v_BSKH = block.decode(x_BTD, positions_BT, mask_B1TS, k_BSKH, v_BSKH)
      return x_BTD, (k_BSKH, v_BSKH)

    x_BTD, (k_LBSKH, v_LBSKH) = jax.lax.scan(body, x_BTD, (stacked, cache['k'], cache['v']),
                                             unroll=self.cfg.unroll_layers)
    return self._logits(x_BTD), {'k': k_LBSKH, 'v': v_LBSKH}

  def _hidden(self, tokens_BT, positions_BT, segment_ids_BT, dropout_key, domains_BT):
    """The last block's output [B, T, D] (before the final norm) and the MoE statistics
    ({} for a dense model): what __call__ and classify share."""
    cfg = self.cfg
    b, t = tokens_BT.shape
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones((b, t), jnp.int32)
    mask_B1TT = attention_mask(segment_ids_BT, causal=cfg.causal)

    x_BTD = self._embed(tokens_BT, positions_BT)
    if dropout_key is not None:
      dropout_key, k_embed = jax.random.split(dropout_key)
      x_BTD = dropout(x_BTD, cfg.dropout, k_embed)
    x_BTD = constrain(x_BTD, ACT_BTD)
    if cfg.moe.enabled:
      return self._apply_groups(x_BTD, positions_BT, mask_B1TT, domains_BT, dropout_key)
    return self._apply_blocks(x_BTD, positions_BT, mask_B1TT, dropout_key), {}

  def _embed(self, tokens_BT, positions_BT):
    cfg = self.cfg
    x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(cfg.jnp_dtype)
    if self.embed_scale is not None:
      x_BTD = x_BTD * jnp.take(self.embed_scale[...], tokens_BT, axis=0)[..., None].astype(
          cfg.jnp_dtype)
    if self.pos_embed is not None:
      x_BTD = x_BTD + jnp.take(self.pos_embed[...], positions_BT, axis=0).astype(cfg.jnp_dtype)
    return x_BTD

  def _logits(self, x_BTD):
    cfg = self.cfg
    b, t, _ = x_BTD.shape
    x_BTD = self.final_norm(x_BTD)
    w_DV = self.embed[...].T if self.unembed is None else self.unembed[...]
    logits_BTV = (x_BTD.reshape(b * t, -1) @ w_DV.astype(cfg.jnp_dtype)).reshape(b, t, -1)
    scale_V = self.embed_scale if self.unembed is None else self.unembed_scale
    if scale_V is not None:
      logits_BTV = logits_BTV * scale_V[...].astype(cfg.jnp_dtype)
    if self.unembed_bias is not None:
      logits_BTV = logits_BTV + self.unembed_bias[...].astype(cfg.jnp_dtype)
    return constrain(logits_BTV.astype(jnp.float32), ('batch', 'seq', 'act_vocab'))

  def _apply_blocks(self, x_BTD, positions_BT, mask_B1TT, dropout_key):
    block_def, stacked = nnx.split(self.blocks)
    layer_keys = (None if dropout_key is None else
                  jax.random.split(dropout_key, self.cfg.num_layers))

    def body(x_BTD, layer):
      layer_state, key = layer
      block = nnx.merge(block_def, layer_state)
      return block(x_BTD, positions_BT, mask_B1TT, key), None

    if self.cfg.remat != 'none':
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
    # Unrolling keeps the stacked layout but lets XLA schedule the layers as straight-line
    # code: on CPU the rolled loop's backward pass costs ~1.5x more.
    x_BTD, _ = jax.lax.scan(body, x_BTD, (stacked, layer_keys), unroll=self.cfg.unroll_layers)
    return x_BTD

  def _apply_groups(self, x_BTD, positions_BT, mask_B1TT, domains_BT, dropout_key):
    """The scanned MoE layer groups; returns (x, aux stacked over the MoE layers)."""
    group_def, stacked = nnx.split(self.blocks)
    num_groups = self.cfg.num_layers // self.cfg.moe.every
    group_keys = None if dropout_key is None else jax.random.split(dropout_key, num_groups)

    def body(x_BTD, layer):
      group_state, key = layer
      return nnx.merge(group_def, group_state)(x_BTD, positions_BT, mask_B1TT, domains_BT, key)

    if self.cfg.remat != 'none':
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
    return jax.lax.scan(body, x_BTD, (stacked, group_keys), unroll=self.cfg.unroll_layers)

  def _decode_groups(self, x_BTD, positions_BT, mask_B1TS, cache):
    every = self.cfg.moe.every
    group_def, stacked = nnx.split(self.blocks)
    k_GEBSKH, v_GEBSKH = (c.reshape(-1, every, *c.shape[1:]) for c in (cache['k'], cache['v']))

    def body(x_BTD, layer):
      group_state, k_EBSKH, v_EBSKH = layer
      x_BTD, k_EBSKH, v_EBSKH = nnx.merge(group_def, group_state).decode(
          x_BTD, positions_BT, mask_B1TS, k_EBSKH, v_EBSKH)
      return x_BTD, (k_EBSKH, v_EBSKH)

    x_BTD, (k_GEBSKH, v_GEBSKH) = jax.lax.scan(body, x_BTD, (stacked, k_GEBSKH, v_GEBSKH),
                                               unroll=self.cfg.unroll_layers)
    return self._logits(x_BTD), {'k': k_GEBSKH.reshape(cache['k'].shape),
                                 'v': v_GEBSKH.reshape(cache['v'].shape)}

  def logical_axes(self) -> nnx.State:
    """A State shaped like the parameters whose leaves are logical-axis tuples."""
    def axes(path, variable):
      names = tuple(variable.get_metadata()['logical_axes'])
      return ('layers',) + names if path[0] == 'blocks' else names
    return nnx.map_state(axes, nnx.state(self, nnx.Param))
