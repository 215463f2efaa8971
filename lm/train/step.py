"""The jit-compiled train and eval steps.

`make_train_step` returns one function that runs `steps_per_dispatch` optimizer
steps with `lax.scan` (fewer host round trips), each step optionally accumulating
gradients over microbatches. The state is donated, so it is updated in place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import parallel
from lm.train import tasks
from lm.train.state import ModelDef

Batch = dict[str, jax.Array]


def token_losses(model_def: ModelDef, params: dict, batch: Batch,
                 dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Per-token cross entropy [B, T] and its weights [B, T] (0 across documents/padding)."""
  model = model_def.merge(params)
  logits_BTV = model(batch['inputs'], batch['positions'], batch['segment_ids'],
                     dropout_key=dropout_key)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch['targets'])
  return ce_BT, batch['weights'].astype(jnp.float32)


def make_train_step(model_def: ModelDef, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int, mesh, rules, shardings: dict,
                    batch_sharding, task: str = 'lm', mlm_rate: float = 0.15):
  """jit(state, batches[K, B, T]) -> (state, metrics[K]); the state is donated.
  `task` (lm/train/tasks.py) picks the loss; 'mlm' corrupts each batch on the device."""
  use_dropout = model_def.cfg.dropout > 0 or model_def.cfg.lora_dropout > 0
  losses = tasks.classification_losses if task == 'classify' else token_losses

  def loss_sum(params, batch, key):
    ce_BT, w_BT = losses(model_def, params, batch, key)
    return jnp.sum(ce_BT * w_BT), jnp.sum(w_BT)

  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)

  def one_step(state, batch):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    params = state['params']
    if task == 'mlm':  # a fresh masking every step, from the step's key
      batch = tasks.mlm_corrupt(jax.random.fold_in(step_key, 0x6D6C6D), batch, rate=mlm_rate,
                                vocab_size=model_def.cfg.vocab_size)
    if grad_accum == 1:
      (total, count), grads = grad_fn(params, batch, step_key if use_dropout else None)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

      def accumulate(carry, xs):
        i, mb = xs
        key = jax.random.fold_in(step_key, i) if use_dropout else None
        (t, c), g = grad_fn(params, mb, key)
        acc_t, acc_c, acc_g = carry
        return (acc_t + t, acc_c + c, jax.tree.map(jnp.add, acc_g, g)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (total, count, grads), _ = jax.lax.scan(
          accumulate, (0.0, 0.0, zeros), (jnp.arange(grad_accum), micro))
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_state = {'params': optax.apply_updates(params, updates), 'opt_state': opt_state,
                 'step': state['step'] + 1, 'rng': state['rng']}
    metrics = {'train/loss': total / count, 'train/grad_norm': optax.global_norm(grads),
               'train/lr': schedule(state['step'])}
    return new_state, metrics

  def multi_step(state, batches):
    with parallel.use_rules(mesh, rules):
      return jax.lax.scan(one_step, state, batches)

  return jax.jit(multi_step, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


def byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
  """[V] UTF-8 bytes each id decodes to, zero-padded to the model's vocabulary size."""
  lengths_V = np.zeros(vocab_size, np.int32)
  tok = tokenizer.byte_lengths()
  lengths_V[:len(tok)] = tok
  return lengths_V


def make_eval_step(model_def: ModelDef, *, mesh, rules, param_shardings, batch_sharding,
                   byte_lengths_V: jax.Array, task: str = 'lm', mlm_rate: float = 0.15):
  """jit(params, batch) -> sums of loss, tokens and UTF-8 bytes over the batch's targets.
  For 'mlm' the masking is the same fixed draw at every evaluation."""

  def eval_step(params, batch):
    if task == 'mlm':
      batch = tasks.mlm_corrupt(jax.random.key(0), batch, rate=mlm_rate,
                                vocab_size=model_def.cfg.vocab_size)
    with parallel.use_rules(mesh, rules):
      ce_BT, w_BT = token_losses(model_def, params, batch, None)
    bytes_BT = jnp.take(byte_lengths_V, batch['targets']).astype(jnp.float32)
    return {'loss_sum': jnp.sum(ce_BT * w_BT), 'tokens': jnp.sum(w_BT),
            'bytes': jnp.sum(bytes_BT * w_BT)}

  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                 out_shardings=parallel.replicated(mesh))


def summarize_eval(sums: list[dict]) -> dict[str, float]:
  """Validation loss (nats/token), perplexity and bits per byte from per-batch sums."""
  loss_sum = sum(float(s['loss_sum']) for s in sums)
  tokens = max(sum(float(s['tokens']) for s in sums), 1.0)
  nbytes = max(sum(float(s['bytes']) for s in sums), 1.0)
  loss = loss_sum / tokens
  out = {'eval/loss': loss, 'eval/perplexity': math.exp(min(loss, 50.0)),
         'eval/bits_per_byte': loss_sum / nbytes / math.log(2)}
  if sums and 'correct' in sums[0]:  # classification
    out['eval/accuracy'] = tasks.accuracy(sums)
  return out
