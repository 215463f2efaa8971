"""The decoder Transformer: embeddings, a scanned stack of blocks, the LM head.

All layers' parameters live stacked on a leading 'layers' axis (one checkpoint
layout) and are applied with `jax.lax.scan`, so compile time does not grow with depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lm.model.attention import Attention, attention_mask, cache_attention_mask
from lm.model.config import ModelConfig
from lm.model.heads import ClassifierHead
from lm.model.layers import Norm, dropout, param
from lm.model.lora import add_adapters, bind_dropout
from lm.model.mlp import MLP
from lm.model.moe import MoE
from lm.parallel.rules import constrain, is_split

ACT_BTD = ('batch', 'seq', 'act_embed')
REMAT_POLICIES = {
    'full': None,  # save nothing, recompute the block in the backward pass
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) (or a mixture of
  experts)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, moe: bool = False):
    norm = dict(kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias,
                param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.attn_norm = Norm(cfg.width, **norm)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = Norm(cfg.width, **norm)
    self.is_moe = moe
    self.mlp = MoE(cfg, rngs=rngs) if moe else MLP(cfg, rngs=rngs)
    if cfg.lora_rank:
      add_adapters(self, cfg, rngs)

  def __call__(self, x_BTD, positions_BT, mask_B1TS, dropout_key=None, *, kv=None,
               domains_BT=None):
    """(x, kv, aux). Without `kv` the tokens attend to each other under `mask_B1TT`
    (training, scoring); with kv=(k [B, S, K, H], v) a KV cache, this call's keys and values
    are written at slots `positions_BT` and the tokens attend to the cache (decoding). aux:
    the MoE layer's statistics ({} for a dense block)."""
    bind_dropout(self, dropout_key)
    k_attn, k_mlp = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    h_BTD = self.attn_norm(x_BTD)
    if kv is None:
      a_BTD = self.attn(h_BTD, positions_BT, mask_B1TS, k_attn)
    else:
      a_BTD, k_BSKH, v_BSKH = self.attn.decode(h_BTD, positions_BT, mask_B1TS, *kv)
      kv = (k_BSKH, v_BSKH)
    x_BTD = constrain(x_BTD + a_BTD, ACT_BTD)
    h_BTD = self.mlp_norm(x_BTD)
    if self.is_moe:
      y_BTD, aux = self.mlp(h_BTD, domains_BT, k_mlp)
    else:
      y_BTD, aux = self.mlp(h_BTD, k_mlp), {}
    return constrain(x_BTD + y_BTD, ACT_BTD), kv, aux

  def attention_probs(self, x_BTD, positions_BT, mask_B1TT):
    """The attention weights [B, N, T, T] this block applies to its input `x_BTD`."""
    return self.attn.probs(self.attn_norm(x_BTD), positions_BT, mask_B1TT)


class LayerGroup(nnx.Module):
  """`moe.every` consecutive layers, the last with a mixture of experts: the unit that is
  stacked and scanned when the model has experts (every=1: each layer is one MoE block)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.num_dense = cfg.moe.every - 1
    for i in range(self.num_dense):
      setattr(self, f'dense_{i}', Block(cfg, rngs=rngs))
    self.moe = Block(cfg, rngs=rngs, moe=True)

  def layer_blocks(self) -> list[Block]:
    """The group's blocks in layer order (its dense ones, then the MoE one)."""
    return [getattr(self, f'dense_{i}') for i in range(self.num_dense)] + [self.moe]

  def __call__(self, x_BTD, positions_BT, mask_B1TS, dropout_key=None, *, kv=None,
               domains_BT=None):
    """Block.__call__ over the group's layers; kv holds their caches [every, B, S, K, H]."""
    blocks = self.layer_blocks()
    keys = ([None] * len(blocks) if dropout_key is None else
            list(jax.random.split(dropout_key, len(blocks))))
    caches = []
    for i, block in enumerate(blocks):
      x_BTD, layer_kv, aux = block(x_BTD, positions_BT, mask_B1TS, keys[i],
                                   kv=None if kv is None else (kv[0][i], kv[1][i]),
                                   domains_BT=domains_BT)
      caches.append(layer_kv)
    if kv is not None:
      kv = (jnp.stack([k for k, _ in caches]), jnp.stack([v for _, v in caches]))
    return x_BTD, kv, aux


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
    x_BTD, aux = self.hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_key=dropout_key,
                             domains_BT=domains_BT)
    logits_BTV = self.logits(x_BTD)
    return (logits_BTV, aux) if return_aux else logits_BTV

  def classify(self, tokens_BT: jax.Array, positions_BT: jax.Array,
               segment_ids_BT: jax.Array, lengths_B: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Class logits [B, C] of one example per row (`lengths_B` real tokens, then padding)."""
    if self.classifier is None:
      raise ValueError('this model has no classification head; set model.num_classes > 0')
    x_BTD, _ = self.hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_key=dropout_key)
    return self.classifier(self.final_norm(x_BTD), lengths_B)

  def decode(self, tokens_BT: jax.Array, positions_BT: jax.Array,
             cache: dict[str, jax.Array], *, domains_BT: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits of `tokens_BT` at `positions_BT`, reading and filling a KV cache.

    `cache` is {'k', 'v'}: [layers, B, S, K, H] where slot s of a row holds position s.
    One call can prefill a whole (right-padded) prompt or feed one token per row; a token
    at position p attends to slots 0..p. Returns (logits [B, T, V], updated cache).
    """
    x_BTD = constrain(self.embed_tokens(tokens_BT, positions_BT), ACT_BTD)
    mask_B1TS = cache_attention_mask(positions_BT, cache['k'].shape[2])
    x_BTD, (k_LBSKH, v_LBSKH), _ = self.layers(x_BTD, positions_BT, mask_B1TS,
                                               kv=(cache['k'], cache['v']),
                                               domains_BT=domains_BT)
    return self.logits(x_BTD), {'k': k_LBSKH, 'v': v_LBSKH}

  def hidden(self, tokens_BT, positions_BT=None, segment_ids_BT=None, *, dropout_key=None,
             domains_BT=None):
    """The last block's output [B, T, D] (before the final norm) and the MoE statistics
    ({} for a dense model): what __call__ and classify share."""
    cfg = self.cfg
    b, t = tokens_BT.shape
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones((b, t), jnp.int32)
    mask_B1TT = attention_mask(segment_ids_BT, causal=cfg.causal)

    x_BTD = self.embed_tokens(tokens_BT, positions_BT)
    if dropout_key is not None:
      dropout_key, k_embed = jax.random.split(dropout_key)
      x_BTD = dropout(x_BTD, cfg.dropout, k_embed)
    x_BTD = constrain(x_BTD, ACT_BTD)
    x_BTD, _, aux = self.layers(x_BTD, positions_BT, mask_B1TT, dropout_key=dropout_key,
                                domains_BT=domains_BT)
    return x_BTD, aux

  def embed_tokens(self, tokens_BT, positions_BT):
    """The residual stream entering the first block, [B, T, D]: token (+ position)
    embeddings."""
    cfg = self.cfg
    x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(cfg.jnp_dtype)
    if self.embed_scale is not None:
      x_BTD = x_BTD * jnp.take(self.embed_scale[...], tokens_BT, axis=0)[..., None].astype(
          cfg.jnp_dtype)
    if self.pos_embed is not None:
      x_BTD = x_BTD + jnp.take(self.pos_embed[...], positions_BT, axis=0).astype(cfg.jnp_dtype)
    return x_BTD

  def logits(self, x_BTD):
    """The LM head: final norm and unembedding of the last block's output, float32."""
    cfg = self.cfg
    b, t, _ = x_BTD.shape
    x_BTD = self.final_norm(x_BTD)
    w_DV = self.embed[...].T if self.unembed is None else self.unembed[...]
    rows = (b, t, -1) if is_split('seq') else (b * t, -1)  # see layers.Projection
    logits_BTV = (x_BTD.reshape(rows) @ w_DV.astype(cfg.jnp_dtype)).reshape(b, t, -1)
    scale_V = self.embed_scale if self.unembed is None else self.unembed_scale
    if scale_V is not None:
      logits_BTV = logits_BTV * scale_V[...].astype(cfg.jnp_dtype)
    if self.unembed_bias is not None:
      logits_BTV = logits_BTV + self.unembed_bias[...].astype(cfg.jnp_dtype)
    return constrain(logits_BTV.astype(jnp.float32), ('batch', 'seq', 'act_vocab'))

  def layers(self, x_BTD, positions_BT, mask_B1TS, *, kv=None, dropout_key=None,
             domains_BT=None):
    """The one layer loop, for training, scoring and decoding alike: a scan over the
    stacked layers (Blocks, or LayerGroups with experts), each called as Block.__call__.

    `kv` (decoding) is (k, v) caches [layers, B, S, K, H]. Returns (x, kv or None, aux
    stacked over the stacked layers)."""
    cfg = self.cfg
    layer_def, stacked = nnx.split(self.blocks)
    _, num_stacked = stacked_layer(cfg)
    keys = None if dropout_key is None else jax.random.split(dropout_key, num_stacked)
    if kv is not None:  # [layers, ...] -> [stacked units, layers per unit, ...]
      kv = tuple(c.reshape(num_stacked, -1, *c.shape[1:]) if cfg.moe.enabled else c
                 for c in kv)

    def body(x_BTD, layer):
      layer_state, key, layer_kv = layer
      x_BTD, layer_kv, aux = nnx.merge(layer_def, layer_state)(
          x_BTD, positions_BT, mask_B1TS, key, kv=layer_kv, domains_BT=domains_BT)
      return x_BTD, (layer_kv, aux)

    if cfg.remat != 'none' and kv is None:  # (decoding has no backward pass to save for)
      body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    # Unrolling keeps the stacked layout but lets XLA schedule the layers as straight-line
    # code: on CPU the rolled loop's backward pass costs ~1.5x more.
    x_BTD, (kv, aux) = jax.lax.scan(body, x_BTD, (stacked, keys, kv), unroll=cfg.unroll_layers)
    if kv is not None and cfg.moe.enabled:
      kv = tuple(c.reshape(-1, *c.shape[2:]) for c in kv)
    return x_BTD, kv, aux

  def layer_blocks(self) -> list[Block]:
    """Every layer as its own Block module, in order (sliced from the stacked parameters):
    calling them one by one on `embed_tokens`' output and `logits` at the end computes
    what __call__ does, with each layer's input at hand (lm.tools.inspect)."""
    layer_def, stacked = nnx.split(self.blocks)
    _, num_stacked = stacked_layer(self.cfg)
    units = [nnx.merge(layer_def, jax.tree.map(lambda a, i=i: a[i], stacked))
             for i in range(num_stacked)]
    return [b for u in units for b in (u.layer_blocks() if isinstance(u, LayerGroup) else [u])]

  def logical_axes(self) -> nnx.State:
    """A State shaped like the parameters whose leaves are logical-axis tuples."""
    def axes(path, variable):
      names = tuple(variable.get_metadata()['logical_axes'])
      return ('layers',) + names if path[0] == 'blocks' else names
    return nnx.map_state(axes, nnx.state(self, nnx.Param))
