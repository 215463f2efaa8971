"""Knowledge distillation (train.task='distill'): a student learns a teacher's distribution.

Per target token, with p = softmax(teacher / T), q = softmax(student / T):

  loss = alpha * T^2 * KL(p || q) + (1 - alpha) * CE(student, data)

(T^2 keeps the KL's gradient on the scale of the cross entropy's as T grows; Hinton et al.
2015). alpha = train.distill.alpha, T = train.distill.temperature. The teacher is any
trained run with the same tokenizer (depth and width may differ), run in the same step on
the same mesh by the student's sharding rules (online), or its top-k logits per token are
computed once before training and the KL is taken over those k ids (offline, train.distill.
offline_top_k = k): p is the teacher's softmax renormalised over its top k, and
KL = sum_k p_k (log p_k - log q_k) with q the student's full softmax at those ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lm import parallel
from lm.model import ModelDef


def _logits(model_def: ModelDef, params: dict, batch: dict, dropout_key=None) -> jax.Array:
  return model_def.merge(params)(batch['inputs'], batch['positions'], batch['segment_ids'],
                                 dropout_key=dropout_key).astype(jnp.float32)


def _common(student_BTV: jax.Array, teacher_BTV: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Both logits over the ids they share (a model may pad its vocabulary beyond the
  tokenizer's; those ids never occur)."""
  v = min(student_BTV.shape[-1], teacher_BTV.shape[-1])
  return student_BTV[..., :v], teacher_BTV[..., :v]


def kl_BT(student_BTV: jax.Array, teacher_BTV: jax.Array, temperature: float) -> jax.Array:
  """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per token."""
  student_BTV, teacher_BTV = _common(student_BTV, teacher_BTV)
  log_p = jax.nn.log_softmax(teacher_BTV / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_BTV / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def topk_kl_BT(student_BTV: jax.Array, ids_BTK: jax.Array, teacher_BTK: jax.Array,
               temperature: float) -> jax.Array:
  """T^2 * sum_k p_k (log p_k - log q_k): p the teacher's top-k softmax (renormalised),
  q the student's full softmax at the same ids."""
  log_p = jax.nn.log_softmax(teacher_BTK / temperature, axis=-1)
  log_q = jnp.take_along_axis(jax.nn.log_softmax(student_BTV / temperature, axis=-1),
                              ids_BTK, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distill_losses(model_def: ModelDef, params: dict, teacher_def: ModelDef | None,
                   teacher_params: dict, batch: dict, dropout_key: jax.Array | None,
                   distill) -> tuple[jax.Array, jax.Array, dict]:
  """(loss [B, T], weights [B, T], sums of 'kl' and 'ce') of config `distill`
  (train.distill); the teacher's logits come from `teacher_params` (online) or the batch's
  teacher_ids / teacher_logits (offline top-k)."""
  student_BTV = _logits(model_def, params, batch, dropout_key)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(student_BTV, batch['targets'])
  if 'teacher_ids' in batch:
    kl = topk_kl_BT(student_BTV, batch['teacher_ids'], batch['teacher_logits'],
                    distill.temperature)
  else:
    teacher_BTV = jax.lax.stop_gradient(_logits(teacher_def, teacher_params, batch))
    kl = kl_BT(student_BTV, teacher_BTV, distill.temperature)
  w_BT = batch['weights'].astype(jnp.float32)
  loss_BT = distill.alpha * kl + (1.0 - distill.alpha) * ce_BT
  return loss_BT, w_BT, {'kl': jnp.sum(kl * w_BT), 'ce': jnp.sum(ce_BT * w_BT)}


def make_topk_fn(teacher_def: ModelDef, k: int, *, mesh, rules, param_shardings,
                 batch_sharding):
  """jit(teacher params, batch) -> (ids [B, T, k] int32, logits [B, T, k] float32): the
  teacher's k largest logits per position (offline distillation)."""

  def topk(params, batch):
    with parallel.use_rules(mesh, rules):
      logits_BTK, ids_BTK = jax.lax.top_k(_logits(teacher_def, params, batch), k)
    return ids_BTK.astype(jnp.int32), logits_BTK

  return jax.jit(topk, in_shardings=(param_shardings, batch_sharding))
