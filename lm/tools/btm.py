"""Branch-train-merge over the domains of a `data.mixture` run.

`branch` forks a trained run into one run per domain that starts from its parameters
(init_from) and trains on that domain only (the other domains get weight 0: still
evaluated, never trained on); `merge` writes the branches' parameter average as a new run
(lm.run.write_run); `evaluate` gives the per-domain validation loss of the ensemble (the
mean of the branches' next-token probabilities) or of the parameter average.

Branches of one parent share its model and data preparation (tokenizer included), which
is what makes their parameters and probabilities comparable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lm import parallel
from lm import workdir as workdir_lib
from lm.errors import UserError, WorkdirError
from lm.run import Run, load_run, write_run
from lm.tools.run_data import run_data
from lm.train import train
from lm.train.step import domain_sums, summarize_domains


def branch_configs(parent: str, steps: int | None = None,
                   domains: Sequence[str] = ()) -> dict[str, Any]:
  """{domain: config of its branch run} forked from the trained run `parent`."""
  config = workdir_lib.read_config(parent)
  names = [entry[0] for entry in config.data.mixture]
  if not names:
    raise WorkdirError(f'{parent} was not trained on a data.mixture; branch-train-merge needs '
                       'domains (data.mixture) to branch over.')
  unknown = sorted(set(domains) - set(names))
  if unknown:
    raise UserError(f'--domains {unknown} are not in the parent\'s data.mixture {names}.')
  out = {}
  for name in domains or names:
    c = workdir_lib.read_config(parent)
    c.data.mixture = tuple((n, s, 1.0 if n == name else 0.0) for n, s, _ in c.data.mixture)
    c.init_from = workdir_lib.name(parent)
    if steps is not None:
      c.train.steps = steps
      c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, steps)
      c.checkpoint.every = steps
      c.train.eval_every = steps
    out[name] = c
  return out


def branch(parent: str, out: str, steps: int | None = None, domains: Sequence[str] = (),
           log: Callable[[str], None] = print) -> dict[str, dict]:
  """Trains every branch (sequentially) into out/<domain>; returns their final metrics."""
  results = {}
  for name, config in branch_configs(parent, steps, domains).items():
    workdir = os.fspath(workdir_lib.path(out) / name)
    log(f'[btm] branch {name}: {config.train.steps} steps from {parent} into {workdir}')
    results[name] = train(config, workdir)
  return results


def _load(workdirs: Sequence[str], log) -> list[Run]:
  if not workdirs:
    raise UserError('--branches is empty; give the branch workdirs, comma-separated.')
  runs = [load_run(w, mesh='run', log=log) for w in workdirs]
  first = runs[0]
  for w, r in zip(workdirs[1:], runs[1:], strict=True):
    if r.model_def.cfg != first.model_def.cfg:
      raise WorkdirError(f'{w} has another model than {workdirs[0]}; branches of one parent '
                         'share the model.')
    if r.tokenizer.vocab_size != first.tokenizer.vocab_size:
      raise WorkdirError(f'{w} has another tokenizer than {workdirs[0]}.')
  return runs


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
  if not weights:
    return [1.0 / n] * n
  if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
    raise UserError(f'--weights {list(weights)}: give {n} non-negative weights, not all 0.')
  return [w / sum(weights) for w in weights]


def average_params(params: Sequence[dict], weights: Sequence[float]) -> dict:
  """The weighted parameter average of same-shaped parameter trees."""
  return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs, strict=True)), *params)


def merge(branches: Sequence[str], out: str, weights: Sequence[float] | None = None,
          log: Callable[[str], None] = print) -> str:
  """Writes the parameter average of `branches` as the new run `out`; returns its path."""
  workdir_lib.check_new(out, '--out')
  runs = _load(branches, log)
  avg = average_params([r.params for r in runs], _weights(weights, len(runs)))
  config = runs[0].config
  config.init_from = ''
  config.data.mixture = tuple((n, s, 1.0) for n, s, _ in config.data.mixture)
  step = max(r.step for r in runs)
  write_run(out, config, avg, runs[0].tokenizer, step=step)
  log(f'[btm] merged {len(runs)} branches into {workdir_lib.name(out)} (step {step})')
  return workdir_lib.name(out)


def evaluate(branches: Sequence[str], mode: str = 'ensemble',
             weights: Sequence[float] | None = None, num_batches: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, float]:
  """Validation loss overall and per domain of the branches' ensemble or parameter average."""
  runs = _load(branches, log)
  w = _weights(weights, len(runs))
  first = runs[0]
  cfg = first.config
  model_def = first.model_def
  names = [entry[0] for entry in cfg.data.mixture]
  params = ([average_params([r.params for r in runs], w)] if mode == 'average'
            else [r.params for r in runs])
  w_R = jnp.asarray([1.0] if mode == 'average' else w, jnp.float32)

  @jax.jit
  def sums(params_list, batch):
    with parallel.use_rules(first.mesh, parallel.rules_for(cfg.mesh)):
      logp = [jax.nn.log_softmax(model_def.merge(p)(
          batch['inputs'], batch['positions'], batch['segment_ids'],
          domains_BT=batch.get('domains')), axis=-1) for p in params_list]
    # log sum_r w_r p_r(token): the ensemble's next-token log-probability.
    logp_RBTV = jnp.stack(logp) + jnp.log(w_R)[:, None, None, None]
    logp_BTV = jax.nn.logsumexp(logp_RBTV, axis=0)
    ce_BT = optax.softmax_cross_entropy_with_integer_labels(logp_BTV, batch['targets'])
    w_BT = batch['weights'].astype(jnp.float32)
    out = {'loss_sum': jnp.sum(ce_BT * w_BT), 'tokens': jnp.sum(w_BT)}
    if names:
      out.update(domain_sums(batch['domains'], len(names), ce_BT * w_BT, w_BT, w_BT))
    return out

  data = run_data(cfg, first.tokenizer, log, where=first.workdir)
  local = data.eval_batches(
      batch_size=cfg.train.batch_size,
      num_batches=cfg.train.eval_batches if num_batches is None else num_batches)
  sharding = parallel.batch_sharding(first.mesh)
  all_sums = [sums(params, parallel.global_batch(b, sharding)) for b in local]
  loss = (sum(float(s['loss_sum']) for s in all_sums)
          / max(sum(float(s['tokens']) for s in all_sums), 1.0))
  result = {'eval/loss': loss, 'eval/perplexity': math.exp(min(loss, 50.0))}
  result.update({k: v for k, v in summarize_domains(all_sums, names).items()
                 if not k.endswith('bits_per_byte')})  # bytes are not summed here
  return result


