"""What each train.task optimises: per-token (or per-example) losses and their weights.

  lm / sft   next-token cross entropy; the data's `weights` say which targets count
             (sft: response tokens only)
  mlm        BERT masking, done on the device every step from the step's RNG: 15%
             (train.mlm_rate) of the real tokens are selected; of those 80% become
             [MASK], 10% a random token, 10% stay; the loss is on the selected tokens
  classify   cross entropy of the head's logits against one label per row

Every loss function returns (loss, weight) arrays whose weighted sum / weight total is
the mean loss, so the train step is the same for all tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lm import parallel
from lm.model import ModelDef

FIRST_REAL_TOKEN = 3  # ids 0, 1, 2 are pad, bos, eos in every tokenizer (never masked)


def mask_token_id(vocab_size: int) -> int:
  """[MASK] is the id after the tokenizer's vocabulary: encoders get one extra embedding."""
  return vocab_size - 1


def mlm_corrupt(key: jax.Array, batch: dict, *, rate: float, vocab_size: int) -> dict:
  """The batch with masked-LM inputs, targets = the original tokens, weights = selected.

  `vocab_size` is the model's (the tokenizer's + 1 for [MASK]); random replacements are
  drawn from the real tokens.
  """
  tokens_BT = batch['inputs']
  real_BT = (batch['segment_ids'] != 0) & (tokens_BT >= FIRST_REAL_TOKEN)
  k_select, k_kind, k_random = jax.random.split(key, 3)
  selected_BT = real_BT & jax.random.bernoulli(k_select, rate, tokens_BT.shape)
  kind_BT = jax.random.uniform(k_kind, tokens_BT.shape)
  random_BT = jax.random.randint(k_random, tokens_BT.shape, FIRST_REAL_TOKEN,
                                 mask_token_id(vocab_size), dtype=tokens_BT.dtype)
  corrupted_BT = jnp.where(kind_BT < 0.8, mask_token_id(vocab_size),
                           jnp.where(kind_BT < 0.9, random_BT, tokens_BT))
  return {**batch, 'inputs': jnp.where(selected_BT, corrupted_BT, tokens_BT),
          'targets': tokens_BT, 'weights': selected_BT.astype(jnp.float32)}


def classification_losses(model_def: ModelDef, params: dict, batch: dict,
                          dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Per-example cross entropy [B] and weights [B] (0 for padding rows)."""
  logits_BC = model_def.merge(params).classify(
      batch['inputs'], batch['positions'], batch['segment_ids'], batch['lengths'],
      dropout_key=dropout_key)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch['labels'])
  return ce_B, (batch['lengths'] > 0).astype(jnp.float32)


def make_classify_eval_step(model_def: ModelDef, *, mesh, rules, param_shardings,
                            batch_sharding):
  """jit(params, batch) -> sums of loss, examples ('tokens'), 'bytes' (= examples) and
  correct predictions; `summarize_eval` adds eval/accuracy."""

  def eval_step(params, batch):
    with parallel.use_rules(mesh, rules):
      logits_BC = model_def.merge(params).classify(
          batch['inputs'], batch['positions'], batch['segment_ids'], batch['lengths'])
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch['labels'])
    w_B = (batch['lengths'] > 0).astype(jnp.float32)
    correct_B = (jnp.argmax(logits_BC, -1) == batch['labels']).astype(jnp.float32)
    return {'loss_sum': jnp.sum(ce_B * w_B), 'tokens': jnp.sum(w_B), 'bytes': jnp.sum(w_B),
            'correct': jnp.sum(correct_B * w_B)}

  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                 out_shardings=parallel.replicated(mesh))


def accuracy(sums: list[dict]) -> float:
  """Fraction of correct predictions from per-batch sums (classification eval)."""
  return (sum(float(s['correct']) for s in sums)
          / max(sum(float(s['tokens']) for s in sums), 1.0))
