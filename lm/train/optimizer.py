"""AdamW or Muon (lm/train/muon.py) with warmup + decay (cosine, linear or
warmup-stable-decay), global-norm clipping and a weight-decay mask; `train_only` restricts
an optimizer to some parameters (LoRA: the adapters and a classification head)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm.model import lora
from lm.train import muon

HEAD = 'classifier'  # the classification head's parameter subtree


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine/linear decay to `min_lr` at `total_steps` ('wsd':
  constant `lr` until the last `decay_fraction` of the steps, then linear to `min_lr`)."""
  warmup = min(opt.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if opt.schedule == 'wsd':
    cooldown = min(round(opt.decay_fraction * total_steps), total_steps - warmup)
    if cooldown <= 0:
      decay = optax.constant_schedule(opt.lr)
    else:
      decay = optax.join_schedules(
          [optax.constant_schedule(opt.lr), optax.linear_schedule(opt.lr, opt.min_lr, cooldown)],
          [total_steps - warmup - cooldown])
  elif opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.min_lr / opt.lr)
  elif opt.schedule == 'linear':
    decay = optax.linear_schedule(opt.lr, opt.min_lr, decay_steps)
  else:
    decay = optax.constant_schedule(opt.lr)
  if warmup == 0:
    return decay
  # nanoGPT's warmup: lr * (step + 1) / warmup for step < warmup.
  warm = optax.linear_schedule(opt.lr / warmup, opt.lr, warmup - 1) if warmup > 1 else (
      optax.constant_schedule(opt.lr))
  return optax.join_schedules([warm, decay], [warmup])


WEIGHT_DECAY_KINDS = ('norm', 'bias', 'embed')


def decay_mask(params, exclude: tuple[str, ...]) -> dict:
  """True where weight decay applies: every parameter except the excluded kinds —
  'norm' (norm scales), 'bias' (biases), 'embed' (token/position embedding tables)."""
  def is_decayed(path, leaf) -> bool:
    name = str(getattr(path[-1], 'key', path[-1]))
    parent = str(getattr(path[-2], 'key', path[-2])) if len(path) > 1 else ''
    if name == 'scale' or (name == 'bias' and parent.endswith('norm')):
      return 'norm' not in exclude
    if name == 'bias' or name.endswith('_bias'):
      return 'bias' not in exclude
    if name in ('embed', 'pos_embed'):
      return 'embed' not in exclude
    return True
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def build_optimizer(opt: ml_collections.ConfigDict, total_steps: int, logical_axes=None
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain the train step applies, and its learning-rate schedule. Muon
  (optimizer.name='muon') needs the model's `logical_axes` to find its matrices."""
  schedule = learning_rate_schedule(opt, total_steps)
  exclude = tuple(opt.weight_decay_exclude)
  mask = (lambda params: decay_mask(params, exclude)) if exclude else None
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  if opt.get('name', 'adamw') == 'muon':
    if logical_axes is None:
      raise ValueError("optimizer.name='muon' needs the model's logical axes")
    chain.append(muon.muon_adamw(
        schedule, lr=opt.lr, muon_lr=opt.muon_lr, dims=muon.matrix_dims(logical_axes),
        momentum=opt.muon_momentum, b1=opt.b1, b2=opt.b2, eps=opt.eps,
        weight_decay=opt.weight_decay, mask=mask,
        ns_steps=opt.get('muon_ns_steps', muon.NS_STEPS)))  # a config of before the key: 5
  else:
    chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=mask))
  return optax.chain(*chain), schedule


def lora_trainable(path) -> bool:
  """With LoRA, what the optimizer updates: the adapters and a classification head."""
  return lora.is_lora(path) or any(str(getattr(p, 'key', p)) == HEAD for p in path)


def _prune(tree: dict, keep: Callable, path: tuple = ()) -> dict:
  """The nested dict `tree` with only the leaves `keep(path)` selects (empty dicts dropped)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      sub = _prune(v, keep, path + (jax.tree_util.DictKey(k),))
      if sub:
        out[k] = sub
    elif keep(path + (jax.tree_util.DictKey(k),)):
      out[k] = v
  return out


def train_only(inner: optax.GradientTransformation, keep: Callable
               ) -> optax.GradientTransformation:
  """`inner` applied to the parameters `keep(path)` selects; the others get zero updates
  and no optimizer state. (optax.multi_transform does the same, but its MaskedNode
  placeholders do not map onto the parameter shardings; this state is a pruned copy of
  the parameter tree, so the adapters' moments take the adapters' shardings' shape.)"""
  def init(params):
    return inner.init(_prune(params, keep))

  def update(grads, state, params=None):
    updates, state = inner.update(_prune(grads, keep), state,
                                  None if params is None else _prune(params, keep))
    flat = {jax.tree_util.keystr(p): u
            for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    full = jax.tree_util.tree_map_with_path(
        lambda p, g: flat[jax.tree_util.keystr(p)] if keep(p) else jnp.zeros_like(g), grads)
    return full, state

  return optax.GradientTransformation(init, update)
