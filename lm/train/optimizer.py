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


def decay_mask(params) -> dict:
  """True for the parameters weight decay applies to: matrices, not norms/biases/embeddings."""
  def is_decayed(path, leaf) -> bool:
    names = [str(getattr(k, 'key', k)) for k in path]
    if names[-1] in ('bias', 'scale') or names[-1].endswith('_bias'):
      return False
    if names[-1] in ('embed', 'pos_embed'):
      return False
    return leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def build_optimizer(opt: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain the train step applies, and its learning-rate schedule."""
  schedule = learning_rate_schedule(opt, total_steps)
  mask = None if opt.decay_norms_biases_embeddings else decay_mask
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=mask))
  return optax.chain(*chain), schedule
