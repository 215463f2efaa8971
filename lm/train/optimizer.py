"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine/linear decay to `min_lr` at `total_steps`."""
  warmup = min(opt.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if opt.schedule == 'cosine':
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


def build_optimizer(opt: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain the train step applies, and its learning-rate schedule."""
  schedule = learning_rate_schedule(opt, total_steps)
  exclude = tuple(opt.weight_decay_exclude)
  mask = (lambda params: decay_mask(params, exclude)) if exclude else None
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=mask))
  return optax.chain(*chain), schedule
