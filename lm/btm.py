"""Branch-train-merge over the domains of a `data.mixture` run.

  python -m lm.btm branch --parent=RUN --out=DIR --steps=N [--domains=code,prose]
      forks RUN's latest checkpoint into DIR/<domain>, one run per domain that starts from
      RUN's parameters (init_from) and trains N steps on that domain only (the other
      domains get weight 0: still evaluated, never trained on).
  python -m lm.btm merge --branches=DIR/code,DIR/prose --out=DIR/merged [--weights=1,1]
      averages the branches' parameters into a new workdir (config.json + a checkpoint) that
      lm.api.load, lm.generate and lm.main (to train on) read like any run.
  python -m lm.btm eval --branches=... [--mode=ensemble|average]
      per-domain validation loss of the ensemble (the mean of the branches' next-token
      probabilities) or of the parameter average; prints one JSON object.

Branches of one parent share its model and data preparation (tokenizer included), which
is what makes their parameters and probabilities comparable.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

if __name__ == '__main__':  # flags exist only for the command line
  _PARENT = flags.DEFINE_string('parent', None, 'branch: the trained run (workdir) to fork.')
  _OUT = flags.DEFINE_string(
      'out', None, 'branch: directory for the branch workdirs (one per domain); merge: the '
      'merged workdir to write.')
  _STEPS = flags.DEFINE_integer('steps', None, 'branch: training steps of each branch; '
                                "default: the parent's train.steps.")
  _DOMAINS = flags.DEFINE_list(
      'domains', [], "branch: domains to branch (names from the parent's data.mixture); "
      'default: all of them.')
  _BRANCHES = flags.DEFINE_list('branches', [], 'merge/eval: branch workdirs, comma-separated.')
  _WEIGHTS = flags.DEFINE_list('weights', [], 'merge/eval average: a weight per branch '
                               '(normalised); default: equal weights.')
  _MODE = flags.DEFINE_enum('mode', 'ensemble', ['ensemble', 'average'],
                            'eval: mean of the branches\' probabilities, or their parameter '
                            'average.')
  _EVAL_BATCHES = flags.DEFINE_integer('eval_batches', None, 'eval: validation batches; default: '
                                       "the first branch's train.eval_batches.")

CONFIG_FILE = 'config.json'


class UserError(Exception):
  """A problem with the command line or a workdir; printed as one line, exit status 1."""


def _read_config(workdir: str | os.PathLike):
  from lm import config as config_lib
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise UserError(f'{path} not found: is {workdir} a training workdir?')
  return config_lib.from_json(path.read_text(encoding='utf-8'))


def branch_configs(parent: str, steps: int | None = None,
                   domains: Sequence[str] = ()) -> dict[str, Any]:
  """{domain: config of its branch run} forked from the trained run `parent`."""
  config = _read_config(parent)
  names = [entry[0] for entry in config.data.mixture]
  if not names:
    raise UserError(f'{parent} was not trained on a data.mixture; branch-train-merge needs '
                    'domains (data.mixture) to branch over.')
  unknown = sorted(set(domains) - set(names))
  if unknown:
    raise UserError(f'--domains {unknown} are not in the parent\'s data.mixture {names}.')
  out = {}
  for name in domains or names:
    c = _read_config(parent)
    c.data.mixture = tuple((n, s, 1.0 if n == name else 0.0) for n, s, _ in c.data.mixture)
    c.init_from = str(pathlib.Path(parent).resolve())
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
  from lm.train import train
  results = {}
  for name, config in branch_configs(parent, steps, domains).items():
    workdir = os.path.join(out, name)
    log(f'[btm] branch {name}: {config.train.steps} steps from {parent} into {workdir}')
    results[name] = train(config, workdir)
  return results


def _load(workdirs: Sequence[str], log):
  from lm import api
  if not workdirs:
    raise UserError('--branches is empty; give the branch workdirs, comma-separated.')
  runs = [api.load(w, log=log) for w in workdirs]
  first = runs[0]
  for w, r in zip(workdirs[1:], runs[1:], strict=True):
    if r.model_def.cfg != first.model_def.cfg:
      raise UserError(f'{w} has another model than {workdirs[0]}; branches of one parent '
                      'share the model.')
    if r.tokenizer.vocab_size != first.tokenizer.vocab_size:
      raise UserError(f'{w} has another tokenizer than {workdirs[0]}.')
  return runs


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
  if not weights:
    return [1.0 / n] * n
  if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
    raise UserError(f'--weights {list(weights)}: give {n} non-negative weights, not all 0.')
  return [w / sum(weights) for w in weights]


def average_params(params: Sequence[dict], weights: Sequence[float]) -> dict:
  """The weighted parameter average of same-shaped parameter trees."""
  import jax
  return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs, strict=True)), *params)


def merge(branches: Sequence[str], out: str, weights: Sequence[float] | None = None,
          log: Callable[[str], None] = print) -> pathlib.Path:
  """Writes the parameter average of `branches` as a workdir (config.json + checkpoint)."""
  import jax

  from lm import config as config_lib
  from lm.checkpoint import Checkpointer
  from lm.train.optimizer import build_optimizer

  runs = _load(branches, log)
  avg = average_params([r.params for r in runs], _weights(weights, len(runs)))
  config = runs[0].config
  config.init_from = ''
  config.data.mixture = tuple((n, s, 1.0) for n, s, _ in config.data.mixture)
  optimizer, _ = build_optimizer(config.optimizer, config.train.steps)
  step = max(r.step for r in runs)
  state = {'params': avg, 'opt_state': jax.jit(optimizer.init)(avg),
           'step': jax.numpy.asarray(step, jax.numpy.int32),
           'rng': jax.random.key_data(jax.random.key(config.seed))}
  it = runs[0].data.train_iterator(batch_size=config.train.batch_size, seed=config.seed)
  out_path = pathlib.Path(out).resolve()
  out_path.mkdir(parents=True, exist_ok=True)
  config_json = config_lib.to_json(config)
  (out_path / CONFIG_FILE).write_text(config_json, encoding='utf-8')
  with Checkpointer(out_path / 'checkpoints', async_save=False) as checkpoints:
    checkpoints.save(step, state, data_state=it.get_state(), config_json=config_json)
  log(f'[btm] merged {len(runs)} branches into {out_path} (step {step})')
  return out_path


def evaluate(branches: Sequence[str], mode: str = 'ensemble',
             weights: Sequence[float] | None = None, num_batches: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, float]:
  """Validation loss overall and per domain of the branches' ensemble or parameter average."""
  import jax
  import jax.numpy as jnp
  import optax

  from lm import parallel
  from lm.train.step import domain_sums, summarize_domains

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

  local = first.data.eval_batches(
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


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in ('branch', 'merge', 'eval'):
    raise app.UsageError('usage: python -m lm.btm branch|merge|eval --flags '
                         '(python -m lm.btm --help lists them)')
  command = argv[1]
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save/restore at INFO
  try:
    weights = [float(x) for x in _WEIGHTS.value]
  except ValueError:
    print(f'lm.btm: --weights {_WEIGHTS.value} must be numbers', file=sys.stderr)
    sys.exit(1)
  try:
    if command == 'branch':
      if not _PARENT.value or not _OUT.value:
        raise UserError('branch needs --parent=RUN_WORKDIR and --out=DIR')
      branch(_PARENT.value, _OUT.value, _STEPS.value, _DOMAINS.value)
    elif command == 'merge':
      if not _OUT.value:
        raise UserError('merge needs --out=MERGED_WORKDIR')
      merge(_BRANCHES.value, _OUT.value, weights)
    else:
      print(json.dumps(evaluate(_BRANCHES.value, _MODE.value, weights, _EVAL_BATCHES.value),
                       indent=1))
  except UserError as e:
    print(f'lm.btm: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
