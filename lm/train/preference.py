"""Preference tuning (train.task='dpo'): per-pair losses from sequence log-probabilities.

For a pair (x, y_w chosen, y_l rejected), log pi(y | x) is the sum of the log-probabilities
of the response tokens (and eos) of one side (lm/data/preference.py lays pairs out).

  sigmoid (DPO)  z = beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]
                 loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
                 eps = train.dpo.label_smoothing (conservative DPO: a share eps of the
                 labels is assumed flipped); at the start, pi = ref, so z = 0, loss = log 2
  simpo (SimPO)  reference-free; rewards are length-normalised log-probabilities:
                 z = beta * (log pi(y_w) / |y_w| - log pi(y_l) / |y_l|) - gamma
                 loss as above (eps = label smoothing too)
  orpo (ORPO)    reference-free; the SFT loss on the chosen side plus an odds-ratio term:
                 a(y) = log pi(y) / |y| (mean token log-probability, so p(y) = exp a < 1),
                 log odds(y) = a(y) - log(1 - exp a(y)),
                 z = log odds(y_w) - log odds(y_l),
                 loss = -a(y_w) + lambda * [-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)]
                 lambda = train.dpo.orpo_lambda (ORPO's lambda, Hong et al. 2024)

Rewards: r = beta * (log pi(y) - log ref(y)) (DPO's implicit reward) or beta * log pi(y) /
|y| (SimPO, and ORPO, whose loss does not use beta: its rewards order pairs as the log odds
do). Reward accuracy is the share of pairs with r_w > r_l, a tie counting 1/2 (at the start
of DPO every reward is exactly 0: the chance level 0.5).

The reference is the frozen initial model: its parameters are a separate argument of the
step, or, with LoRA, the policy's own with every adapter off (lora_b = 0: no second copy),
or its log-probabilities precomputed once (train.dpo.reference='precomputed').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lm import parallel
from lm.config import REFERENCE_FREE_LOSSES
from lm.model import ModelDef
from lm.model import lora as lora_lib

STATS = ('pairs', 'reward_correct', 'chosen_reward', 'rejected_reward')


def sequence_logps(model_def: ModelDef, params: dict, batch: dict, num_pairs: int,
                   dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(log-probability sums, response token counts) [B, num_pairs, 2] of each pair's
  chosen (0) and rejected (1) side, from the row's segment ids (pair k: 2k - 1, 2k)."""
  logits_BTV = model_def.merge(params)(batch['inputs'], batch['positions'],
                                       batch['segment_ids'], dropout_key=dropout_key)
  logp_BT = -optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), batch['targets'])
  w_BT = batch['weights'].astype(jnp.float32)
  segments = 2 * num_pairs + 1

  def per_segment(v_BT):
    sums_BS = jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=segments))(
        v_BT, batch['segment_ids'])
    return sums_BS[:, 1:].reshape(v_BT.shape[0], num_pairs, 2)

  return per_segment(logp_BT * w_BT), per_segment(w_BT)


def adapters_off(params: dict) -> dict:
  """The parameters of the base model under LoRA: every lora_b zeroed (so A @ B = 0), as a
  constant of the step (no gradient flows into it)."""
  def off(path, x):
    return jnp.zeros_like(x) if str(getattr(path[-1], 'key', path[-1])) == lora_lib.B else x
  return jax.lax.stop_gradient(jax.tree_util.tree_map_with_path(off, params))


def pair_losses(policy_BP2: jax.Array, reference_BP2: jax.Array | None,
                lengths_BP2: jax.Array, dpo) -> tuple[jax.Array, jax.Array, dict]:
  """(loss [B, P], weight [B, P] (1 for a real pair), sums of STATS) of config `dpo`
  (train.dpo). `reference_BP2` is None for the reference-free 'simpo' and 'orpo'."""
  valid_BP = (lengths_BP2[..., 0] > 0) & (lengths_BP2[..., 1] > 0)
  mean_BP2 = policy_BP2 / jnp.maximum(lengths_BP2, 1.0)  # mean token log-probability
  if dpo.loss == 'simpo':
    rewards_BP2 = dpo.beta * mean_BP2
    z_BP = rewards_BP2[..., 0] - rewards_BP2[..., 1] - dpo.simpo_gamma
  elif dpo.loss == 'orpo':
    rewards_BP2 = dpo.beta * mean_BP2
    log_odds_BP2 = log_odds(mean_BP2)
    z_BP = log_odds_BP2[..., 0] - log_odds_BP2[..., 1]
  else:
    rewards_BP2 = dpo.beta * (policy_BP2 - reference_BP2)
    z_BP = rewards_BP2[..., 0] - rewards_BP2[..., 1]
  eps = dpo.label_smoothing
  loss_BP = -(1.0 - eps) * jax.nn.log_sigmoid(z_BP) - eps * jax.nn.log_sigmoid(-z_BP)
  if dpo.loss == 'orpo':  # the SFT loss on the chosen response plus lambda * the odds ratio
    loss_BP = -mean_BP2[..., 0] + dpo.orpo_lambda * loss_BP
  w_BP = valid_BP.astype(jnp.float32)
  margin_BP = rewards_BP2[..., 0] - rewards_BP2[..., 1]
  correct_BP = jnp.where(margin_BP > 0, 1.0, jnp.where(margin_BP == 0, 0.5, 0.0))
  stats = {'pairs': jnp.sum(w_BP), 'reward_correct': jnp.sum(correct_BP * w_BP),
           'chosen_reward': jnp.sum(rewards_BP2[..., 0] * w_BP),
           'rejected_reward': jnp.sum(rewards_BP2[..., 1] * w_BP)}
  return loss_BP, w_BP, stats


def log_odds(mean_logp: jax.Array) -> jax.Array:
  """log(p / (1 - p)) of p = exp(mean_logp) <= 1, held finite where p rounds to 1 (a padding
  pair's mean is 0)."""
  a = jnp.minimum(mean_logp, -1e-6)
  return a - jnp.log1p(-jnp.exp(a))


def reference_logps(model_def: ModelDef, params: dict, frozen: dict, batch: dict, dpo, *,
                    num_pairs: int, lora: bool) -> jax.Array | None:
  """The reference's log-probability sums [B, P, 2] for this batch (None for simpo/orpo):
  precomputed in the batch, the base under LoRA, or the frozen parameters."""
  if dpo.loss in REFERENCE_FREE_LOSSES:
    return None
  if 'ref_logps' in batch:
    return batch['ref_logps']
  ref_params = adapters_off(params) if lora else jax.lax.stop_gradient(frozen)
  return jax.lax.stop_gradient(sequence_logps(model_def, ref_params, batch, num_pairs)[0])


def dpo_losses(model_def: ModelDef, params: dict, frozen: dict, batch: dict,
               dropout_key: jax.Array | None, dpo, *, num_pairs: int, lora: bool
               ) -> tuple[jax.Array, jax.Array, dict]:
  """The step's (loss [B, P], weight [B, P], stats): the policy and its reference."""
  ref_BP2 = reference_logps(model_def, params, frozen, batch, dpo, num_pairs=num_pairs,
                            lora=lora)
  policy_BP2, lengths_BP2 = sequence_logps(model_def, params, batch, num_pairs, dropout_key)
  return pair_losses(policy_BP2, ref_BP2, lengths_BP2, dpo)


def make_eval_step(model_def: ModelDef, dpo, *, num_pairs: int, lora: bool, mesh, rules,
                   param_shardings, frozen_shardings, batch_sharding):
  """jit(params, frozen, batch) -> sums of the DPO loss over pairs ('tokens' and 'bytes'
  are the pair count) and STATS; `summarize` gives the eval metrics."""

  def eval_step(params, frozen, batch):
    with parallel.use_rules(mesh, rules):
      loss_BP, w_BP, stats = dpo_losses(model_def, params, frozen, batch, None, dpo,
                                        num_pairs=num_pairs, lora=lora)
    return {'loss_sum': jnp.sum(loss_BP * w_BP), 'tokens': stats['pairs'],
            'bytes': stats['pairs'], **stats}

  return jax.jit(eval_step, in_shardings=(param_shardings, frozen_shardings, batch_sharding),
                 out_shardings=parallel.replicated(mesh))


def make_logps_fn(model_def: ModelDef, *, num_pairs: int, mesh, rules, param_shardings,
                  batch_sharding):
  """jit(params, batch) -> log-probability sums [B, P, 2] (precomputing the reference's)."""

  def logps(params, batch):
    with parallel.use_rules(mesh, rules):
      return sequence_logps(model_def, params, batch, num_pairs)[0]

  return jax.jit(logps, in_shardings=(param_shardings, batch_sharding))


def summarize(sums: list[dict], prefix: str = 'eval') -> dict[str, float]:
  """{prefix}/reward_accuracy, chosen_reward, rejected_reward, margin (means over pairs)."""
  total = {k: sum(float(s[k]) for s in sums) for k in STATS}
  n = max(total['pairs'], 1.0)
  chosen, rejected = total['chosen_reward'] / n, total['rejected_reward'] / n
  return {f'{prefix}/reward_accuracy': total['reward_correct'] / n,
          f'{prefix}/chosen_reward': chosen, f'{prefix}/rejected_reward': rejected,
          f'{prefix}/margin': chosen - rejected}
