"""Structured pruning: a trained dense run -> a smaller dense run (Minitron-style).

`prune_workdir` loads a run (lm.run.load_run), scores its MLP neurons, attention heads and
KV groups, embedding channels and layers on a calibration sample of the run's own training
data (lm/tools/prune_importance.py), keeps the most important ones to the targets, and
writes the smaller model through lm.run.write_run: a run like any other (it trains, from
step 0 with a fresh optimizer or as `init_from`, evaluates, serves, exports and converts).

What is removed, and what stays consistent:
- layers: whole blocks (lowest block importance first);
- KV groups: a group's K and V heads with all its query heads (GQA stays GQA);
- query heads inside every group (the same number per group, each group its own);
- MLP neurons per layer (each layer its own);
- embedding channels: the same channels of the residual stream everywhere (embeddings,
  every projection's input or output, norms, the unembedding).
The head size is kept: the pruned config records model.head_dim explicitly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable

import jax
import numpy as np

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.config import ConfigDict
from lm.errors import UserError
from lm.model import ModelConfig, ModelDef
from lm.run import load_run, model_config, write_run
from lm.tools.prune_importance import Importance, importance
from lm.tools.run_data import run_data

PLAN_FILE = 'prune.json'  # written into the pruned run: what was kept, from which run


class PruneError(UserError):
  """A pruning target that the run cannot be pruned to; names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Targets:
  """Sizes to prune to: an int is a size, a float in (0, 1] the fraction of the original
  kept; None keeps the dimension."""

  num_layers: int | float | None = None
  num_kv_heads: int | float | None = None
  num_heads: int | float | None = None
  mlp_dim: int | float | None = None
  width: int | float | None = None

  @classmethod
  def parse(cls, **flags: str | None) -> Targets:
    """From flag strings: '96' is a size, '0.5' a fraction ('' / None: keep)."""
    values = {}
    for name, text in flags.items():
      if text in (None, ''):
        values[name] = None
        continue
      try:
        values[name] = float(text) if any(c in text for c in '.eE') else int(text)
      except ValueError:
        raise PruneError(f'--{name}={text!r} is neither a size (an integer) nor a fraction '
                         '(e.g. 0.5)') from None
    return cls(**values)


def _size(value: int | float | None, original: int, flag: str) -> int:
  if value is None:
    return original
  if isinstance(value, float):
    if not 0.0 < value <= 1.0:
      raise PruneError(f'--{flag}={value}: a fraction must be in (0, 1] (the share kept)')
    return max(1, round(value * original))
  if not 1 <= value <= original:
    raise PruneError(f'--{flag}={value}: the run has {original}; a target must be between 1 '
                     f'and {original} (pruning removes, never adds)')
  return value


@dataclasses.dataclass(frozen=True)
class Plan:
  """The indices kept, in the original model's numbering (sorted, so order is kept).

  layers [L'] | channels [D'] | groups [L', K'] | queries [L', K', G'] (the query slot
  within its group) | neurons [L', F'], each per kept layer."""

  layers: np.ndarray
  channels: np.ndarray
  groups: np.ndarray
  queries: np.ndarray
  neurons: np.ndarray

  def sizes(self) -> dict[str, int]:
    num_kv = self.groups.shape[1]
    return {'num_layers': len(self.layers), 'num_kv_heads': num_kv,
            'num_heads': num_kv * self.queries.shape[2], 'mlp_dim': self.neurons.shape[1],
            'width': len(self.channels)}

  def to_json(self) -> dict:
    return {k: v.tolist() for k, v in dataclasses.asdict(self).items()}


def target_sizes(cfg: ModelConfig, targets: Targets) -> dict[str, int]:
  """The pruned model's sizes, checked (PruneError naming the flag)."""
  k, n = cfg.num_kv_heads, cfg.num_heads
  num_kv = _size(targets.num_kv_heads, k, 'num_kv_heads')
  if targets.num_heads is None:
    num_heads = num_kv * (n // k)  # whole KV groups, each with all of its query heads
  else:
    num_heads = _size(targets.num_heads, n, 'num_heads')
    if num_heads % num_kv or num_heads // num_kv > n // k:
      raise PruneError(
          f'--num_heads={num_heads} with {num_kv} KV group(s): every group keeps the same '
          f'number of query heads, at most its {n // k}; choose a multiple of {num_kv} up to '
          f'{num_kv * (n // k)} (or change --num_kv_heads)')
  return {'num_layers': _size(targets.num_layers, cfg.num_layers, 'num_layers'),
          'num_kv_heads': num_kv, 'num_heads': num_heads,
          'mlp_dim': _size(targets.mlp_dim, cfg.mlp_dim, 'mlp_dim'),
          'width': _size(targets.width, cfg.width, 'width')}


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
  """Indices of the `keep` highest scores along the last axis, sorted (ties: lower index)."""
  order = np.argsort(-scores, axis=-1, kind='stable')[..., :keep]
  return np.sort(order, axis=-1)


def make_plan(cfg: ModelConfig, imp: Importance, sizes: dict[str, int]) -> Plan:
  """Keeps the highest-scoring parts to `sizes` (from target_sizes)."""
  layers = _top(imp.layers, sizes['num_layers'])
  groups_per = cfg.num_heads // cfg.num_kv_heads
  queries_per = sizes['num_heads'] // sizes['num_kv_heads']
  groups = _top(imp.groups(cfg.num_kv_heads)[layers], sizes['num_kv_heads'])
  heads_LKG = imp.heads[layers].reshape(len(layers), cfg.num_kv_heads, groups_per)
  heads_LKG = np.take_along_axis(heads_LKG, groups[:, :, None], axis=1)
  return Plan(layers=layers, channels=_top(imp.channels, sizes['width']), groups=groups,
              queries=_top(heads_LKG, queries_per),
              neurons=_top(imp.neurons[layers], sizes['mlp_dim']))


def _selections(plan: Plan, groups_per: int) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
  """Per logical axis: (kept indices, the axes they depend on). The qkv kernel's slot axis
  ('slot': G query heads, then K, then V) keeps the chosen queries and both K and V."""
  num_layers, num_kv, _ = plan.queries.shape
  kv_slots = np.broadcast_to(np.array([groups_per, groups_per + 1]), (num_layers, num_kv, 2))
  heads = (plan.groups[:, :, None] * groups_per + plan.queries).reshape(num_layers, -1)
  return {'layers': (plan.layers, ()), 'embed': (plan.channels, ()),
          'norm': (plan.channels, ()), 'kv_heads': (plan.groups, ('layers',)),
          'slot': (np.concatenate([plan.queries, kv_slots], -1), ('layers', 'kv_heads')),
          'heads': (heads, ('layers',)), 'mlp': (plan.neurons, ('layers',))}


ORDER = ('layers', 'kv_heads', 'slot', 'heads', 'mlp', 'embed', 'norm')  # dependencies first


def _take(x: np.ndarray, axes: tuple, selections: dict) -> np.ndarray:
  for name in ORDER:
    if name not in axes:
      continue
    index, deps = selections[name]
    axis = axes.index(name)
    positions = [axes.index(d) for d in deps] + [axis]
    assert positions == sorted(positions), (axes, name)
    shape = [1] * x.ndim
    for p, n in zip(positions, index.shape, strict=True):
      shape[p] = n
    x = np.take_along_axis(x, index.reshape(shape), axis=axis)
  return x


def prune_params(model_def: ModelDef, params: dict, plan: Plan) -> dict:
  """The parameters of the pruned model: each array sliced along its logical axes."""
  selections = _selections(plan, model_def.cfg.num_heads // model_def.cfg.num_kv_heads)
  axes_tree = model_def.logical_axes()

  def prune(path, x, axes):
    names = tuple(getattr(k, 'key', k) for k in path)
    axes = tuple(axes)
    if 'qkv' in names:  # [layers, embed, kv_heads, slot, head_dim] (the bias: no embed)
      axes = tuple('slot' if a is None else a for a in axes)
    return _take(np.asarray(x), axes, selections)

  host = jax.device_get(params)
  return jax.tree_util.tree_map_with_path(prune, host, axes_tree)


def check_prunable(cfg: ModelConfig, where: str) -> None:
  if cfg.moe.enabled:
    raise PruneError(f'{where} is a mixture of experts (model.moe.num_experts='
                     f'{cfg.moe.num_experts}); prune works on dense models only')
  if cfg.lora_rank:
    raise PruneError(f'{where} has LoRA adapters (lora.rank={cfg.lora_rank}); fold them in '
                     'first: python -m lm lora_merge --workdir=RUN --out=MERGED')


def pruned_config(config: ConfigDict, cfg: ModelConfig, sizes: dict[str, int]) -> ConfigDict:
  """The run's config with the pruned sizes (the head size kept as model.head_dim)."""
  out = config_lib.from_json(config_lib.to_json(config))
  for key, value in sizes.items():
    out.model[key] = value
  out.model.head_dim = cfg.head_dim
  out.init_from = ''
  return out


def calibration_batches(config: ConfigDict, tokenizer, rows: int, batch_size: int, log):
  """`rows` training rows of the run's own data (its saved tokenizer; seeded by config.seed)."""
  data = run_data(config, tokenizer, log)
  batch_size = max(1, min(batch_size, rows))
  iterator = iter(data.train_iterator(batch_size, config.seed))
  return list(itertools.islice(iterator, max(1, rows // batch_size)))


def prune_workdir(workdir: str | os.PathLike, out: str | os.PathLike, targets: Targets, *,
                  step: int | None = None, calibration_rows: int = 256, batch_size: int = 16,
                  log: Callable[[str], None] = print) -> dict:
  """Writes the pruned run of `workdir` (checkpoint `step`, default the latest) to the new
  workdir `out`; returns the summary also saved as `out`/prune.json."""
  workdir_lib.check_new(out, '--out')
  if calibration_rows < 1:
    raise PruneError(f'--calibration_rows={calibration_rows}: at least 1 row is needed')
  run = load_run(workdir, step, log=log)
  cfg = run.model_def.cfg
  check_prunable(cfg, run.workdir)
  sizes = target_sizes(cfg, targets)
  batches = calibration_batches(run.config, run.tokenizer, calibration_rows, batch_size, log)
  imp = importance(run.model_def, run.params, batches)
  plan = make_plan(cfg, imp, sizes)
  params = prune_params(run.model_def, run.params, plan)
  config = pruned_config(run.config, cfg, sizes)
  new_cfg = model_config(config, run.tokenizer.vocab_size)
  summary = {'from': run.workdir, 'step': run.step, 'calibration_tokens': imp.tokens,
             'original': {k: getattr(cfg, k) for k in sizes}, 'pruned': sizes,
             'params_before': cfg.param_count(), 'params_after': new_cfg.param_count(),
             'block_importance': imp.layers.round(5).tolist(), 'kept': plan.to_json(),
             'overrides': ' '.join(f'--config.model.{k}={config.model[k]}'
                                   for k in (*sizes, 'head_dim'))}
  write_run(out, config, params, run.tokenizer, step=0,
            files={PLAN_FILE: json.dumps(summary, indent=1)})
  before, after = summary['params_before'], summary['params_after']
  changed = ', '.join(f'{k} {getattr(cfg, k)} -> {v}' for k, v in sizes.items()
                      if v != getattr(cfg, k)) or 'nothing removed'
  log(f'[prune] {run.workdir} step {run.step} ({imp.tokens:,} calibration tokens): '
      f'{changed}; {before:,} -> {after:,} parameters ({after / before:.1%}): '
      f'{workdir_lib.name(out)}')
  log(f'[prune] fine-tune or distill it with: --config.init_from={workdir_lib.name(out)} '
      f'{summary["overrides"]}')
  return summary
