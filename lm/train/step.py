"""The jit-compiled train and eval steps.

`make_train_step` returns one function that runs `steps_per_dispatch` optimizer
steps with `lax.scan` (fewer host round trips), each step optionally accumulating
gradients over microbatches. The state is donated, so it is updated in place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from lm import parallel
from lm.model import ModelDef, losses
from lm.train import distill, preference, tasks

Batch = dict[str, jax.Array]


def token_losses(model_def: ModelDef, params: dict, batch: Batch,
                 dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Per-token cross entropy [B, T] and its weights [B, T] (0 across documents/padding)."""
  ce_BT, w_BT, _ = token_losses_and_aux(model_def, params, batch, dropout_key)
  return ce_BT, w_BT


def token_losses_and_aux(model_def: ModelDef, params: dict, batch: Batch,
                         dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array, dict]:
  """token_losses and the model's MoE statistics per layer ({} for a dense model)."""
  model = model_def.merge(params)
  logits_BTV, aux = model(batch['inputs'], batch['positions'], batch['segment_ids'],
                          dropout_key=dropout_key, domains_BT=batch.get('domains'),
                          return_aux=True)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch['targets'])
  return ce_BT, batch['weights'].astype(jnp.float32), aux


def moe_loss(aux: dict, moe) -> jax.Array:
  """Weighted load-balancing + router z-loss, summed over the MoE layers (0 when dense)."""
  if not aux:
    return jnp.zeros((), jnp.float32)
  return (moe.aux_loss_weight * jnp.sum(aux['load_balance'])
          + moe.z_loss_weight * jnp.sum(aux['z_loss']))


def moe_metrics(aux: dict, moe) -> dict[str, jax.Array]:
  """Scalar metrics per MoE layer: 'moe/layer{i}/...' with i the layer's index in the model."""
  out = {}
  if not aux:
    return out
  for g in range(aux['load_balance'].shape[0]):
    prefix = f'moe/layer{g * moe.every + moe.every - 1}'
    for name in ('load_balance', 'z_loss', 'dropped_fraction'):
      out[f'{prefix}/{name}'] = aux[name][g]
    for e in range(aux['expert_fraction'].shape[1]):
      out[f'{prefix}/expert{e}_tokens'] = aux['expert_fraction'][g, e]
  return out


def make_train_step(model_def: ModelDef, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int, mesh, rules, shardings: dict,
                    batch_sharding, task: str = 'lm', mlm_rate: float = 0.15, train_cfg=None,
                    frozen_def: ModelDef | None = None, frozen_shardings=None,
                    num_pairs: int = 0):
  """jit(state, batches[K, B, T]) -> (state, metrics[K]); the state is donated.
  `task` (lm/train/tasks.py) picks the loss; 'mlm' corrupts each batch on the device.
  'dpo' and 'distill' (config `train_cfg`, i.e. config.train) take the frozen model's
  parameters as a third argument, jit(state, batches, frozen): DPO's reference (or {}),
  the teacher (`frozen_def`; {} offline); `num_pairs` is the pairs a DPO row can hold."""
  use_dropout = model_def.cfg.dropout > 0 or model_def.cfg.lora_dropout > 0
  moe = model_def.cfg.moe
  lora = model_def.cfg.lora_rank > 0

  def loss_sum(params, batch, key, frozen):
    # The objective is sum(ce) + tokens * moe_loss, so after the division by the token
    # count below the gradient is that of mean ce + the weighted MoE losses.
    stats, aux = {}, {}
    if task == 'classify':
      ce_BT, w_BT = tasks.classification_losses(model_def, params, batch, key)
    elif task == 'dpo':  # per pair: [B, P]
      ce_BT, w_BT, stats = preference.dpo_losses(model_def, params, frozen, batch, key,
                                                 train_cfg.dpo, num_pairs=num_pairs, lora=lora)
    elif task == 'distill':
      ce_BT, w_BT, stats = distill.distill_losses(model_def, params, frozen_def, frozen, batch,
                                                  key, train_cfg.distill)
    else:
      ce_BT, w_BT, aux = token_losses_and_aux(model_def, params, batch, key)
    total, count = jnp.sum(ce_BT * w_BT), jnp.sum(w_BT)
    return total + count * moe_loss(aux, moe), (total, count, aux, stats)

  grad_fn = jax.value_and_grad(loss_sum, has_aux=True)

  def one_step(state, batch, frozen):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    params = state['params']
    if task == 'mlm':  # a fresh masking every step, from the step's key
      batch = tasks.mlm_corrupt(jax.random.fold_in(step_key, 0x6D6C6D), batch, rate=mlm_rate,
                                vocab_size=model_def.cfg.vocab_size)
    if grad_accum == 1:
      (_, (total, count, aux, stats)), grads = grad_fn(params, batch,
                                                       step_key if use_dropout else None, frozen)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

      def accumulate(carry, xs):
        i, mb = xs
        key = jax.random.fold_in(step_key, i) if use_dropout else None
        (_, (t, c, a, st)), g = grad_fn(params, mb, key, frozen)
        acc_t, acc_c, acc_g = carry
        return (acc_t + t, acc_c + c, jax.tree.map(jnp.add, acc_g, g)), (a, st)

      zeros = jax.tree.map(jnp.zeros_like, params)
      (total, count, grads), (aux_micro, stats_micro) = jax.lax.scan(
          accumulate, (0.0, 0.0, zeros), (jnp.arange(grad_accum), micro))
      aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), aux_micro)
      stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), stats_micro)
    count = jnp.maximum(count, 1.0)
    # Dividing by the float32 count must not turn bfloat16 gradients (and the optimizer
    # moments that follow their dtype) into float32: the scan carry would change type.
    grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_state = {'params': optax.apply_updates(params, updates), 'opt_state': opt_state,
                 'step': state['step'] + 1, 'rng': state['rng']}
    metrics = {'train/loss': total / count, 'train/grad_norm': optax.global_norm(grads),
               'train/lr': schedule(state['step'])}
    metrics.update(moe_metrics(aux, moe))
    metrics.update(task_metrics(task, stats, count))
    return new_state, metrics

  def multi_step(state, batches, frozen=None):
    with parallel.use_rules(mesh, rules):
      return jax.lax.scan(lambda s, b: one_step(s, b, frozen), state, batches)

  if task in FROZEN_TASKS:
    frozen_sh = parallel.replicated(mesh) if frozen_shardings is None else frozen_shardings
    return jax.jit(multi_step, in_shardings=(shardings, batch_sharding, frozen_sh),
                   out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  return jax.jit(multi_step, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


FROZEN_TASKS = ('dpo', 'distill')  # their steps take a frozen model's parameters too


def task_metrics(task: str, stats: dict, count: jax.Array) -> dict[str, jax.Array]:
  """DPO's train/reward_accuracy, chosen/rejected rewards and margin (per pair), or
  distillation's train/kl and train/ce (per token), from the step's sums."""
  if task == 'dpo':
    n = jnp.maximum(stats['pairs'], 1.0)
    chosen, rejected = stats['chosen_reward'] / n, stats['rejected_reward'] / n
    return {'train/reward_accuracy': stats['reward_correct'] / n,
            'train/chosen_reward': chosen, 'train/rejected_reward': rejected,
            'train/margin': chosen - rejected}
  if task == 'distill':
    return {'train/kl': stats['kl'] / count, 'train/ce': stats['ce'] / count}
  return {}


def make_eval_step(model_def: ModelDef, *, mesh, rules, param_shardings, batch_sharding,
                   byte_lengths_V: jax.Array, num_domains: int = 0, task: str = 'lm',
                   mlm_rate: float = 0.15):
  """jit(params, batch) -> sums of loss, tokens and UTF-8 bytes over the batch's targets
  (and, with `num_domains`, the same sums per domain [num_domains] from batch['domains']).
  For 'mlm' the masking is the same fixed draw at every evaluation."""

  def eval_step(params, batch):
    if task == 'mlm':
      batch = tasks.mlm_corrupt(jax.random.key(0), batch, rate=mlm_rate,
                                vocab_size=model_def.cfg.vocab_size)
    with parallel.use_rules(mesh, rules):
      ce_BT, w_BT = token_losses(model_def, params, batch, None)
    sums = losses.weighted_sums(ce_BT, w_BT, batch['targets'], byte_lengths_V)
    if num_domains:
      bytes_BT = losses.target_bytes(batch['targets'], byte_lengths_V)
      sums.update(domain_sums(batch['domains'], num_domains, ce_BT * w_BT, w_BT, bytes_BT * w_BT))
    return sums

  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                 out_shardings=parallel.replicated(mesh))


def domain_sums(domains_BT: jax.Array, num_domains: int, loss_BT: jax.Array, w_BT: jax.Array,
                bytes_BT: jax.Array) -> dict[str, jax.Array]:
  """Per-domain [num_domains] sums of loss, tokens and bytes."""
  onehot_BTN = jax.nn.one_hot(domains_BT, num_domains, dtype=jnp.float32)
  return {f'domain_{k}': jnp.einsum('BTN,BT->N', onehot_BTN, v)
          for k, v in (('loss_sum', loss_BT), ('tokens', w_BT), ('bytes', bytes_BT))}


def summarize_domains(sums: list[dict], names: list[str]) -> dict[str, float]:
  """eval/<domain>/loss, perplexity and bits_per_byte from per-batch per-domain sums."""
  out = {}
  for i, name in enumerate(names):
    loss_sum = sum(float(s['domain_loss_sum'][i]) for s in sums)
    tokens = sum(float(s['domain_tokens'][i]) for s in sums)
    nbytes = max(sum(float(s['domain_bytes'][i]) for s in sums), 1.0)
    if tokens == 0:
      continue
    loss = loss_sum / tokens
    out.update({f'eval/{name}/loss': loss, f'eval/{name}/perplexity': math.exp(min(loss, 50.0)),
                f'eval/{name}/bits_per_byte': loss_sum / nbytes / math.log(2)})
  return out


def summarize_eval(sums: list[dict]) -> dict[str, float]:
  """Validation loss (nats/token), perplexity and bits per byte from per-batch sums."""
  total = losses.summarize(sums)
  out = {f'eval/{k}': total[k] for k in ('loss', 'perplexity', 'bits_per_byte')}
  if sums and 'correct' in sums[0]:  # classification
    out['eval/accuracy'] = tasks.accuracy(sums)
  if sums and 'reward_correct' in sums[0]:  # preference pairs
    out.update(preference.summarize(sums))
  return out
