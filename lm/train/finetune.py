"""Fine-tuning pieces the Trainer and lm.api share: task data, the model config with its
extras (encoder [MASK] id, classification head, LoRA), the optimizer that trains only
adapters, and `init_from` (parameters of another run's checkpoint)."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from lm import config as config_lib
from lm import parallel
from lm.checkpoint import CONFIG, CONFIG_FILE, Checkpointer, CheckpointError
from lm.data import DataError, mixture, supervised
from lm.data.tokenizers import Tokenizer
from lm.model import ModelConfig, ModelDef, lora
from lm.train import optimizer as optimizer_lib
from lm.train import state as state_lib

Log = Callable[[str], None]
HEAD = 'classifier'  # the classification head's parameter subtree


# ---- data and model config ----------------------------------------------------------------


def prepare_data(cfg: ml_collections.ConfigDict, log: Log = print, check_base: bool = True):
  """The run's data: packed documents (data.format='text') or sft/classify records; with
  init_from, sft/classify records are tokenized with the base run's tokenizer, and
  documents' tokenizer must equal it (`check_base`; loaders of a finished run skip it)."""
  if cfg.data.format == 'text':  # one source, or a data.mixture of domains
    data = mixture.prepare_data(cfg.data, seq_len=cfg.data.seq_len, log=log)
    if cfg.init_from and check_base:
      _check_same_tokenizer(base_tokenizer(cfg, log=lambda _: None), data.tokenizer,
                            data.val_text_sample(4000), cfg.init_from)
    return data
  tokenizer = base_tokenizer(cfg, log) if cfg.init_from else None
  return supervised.prepare(cfg.data, seq_len=cfg.data.seq_len, tokenizer=tokenizer, log=log)


def _check_same_tokenizer(base: Tokenizer, ours: Tokenizer, probe: str, where: str) -> None:
  """The ids of the base run must mean the same text here (same vocabulary and encoding)."""
  if base.vocab_size != ours.vocab_size or base.encode(probe) != ours.encode(probe):
    raise DataError(
        f'init_from={where!r} was trained with another tokenizer ({base.kind}, vocabulary '
        f'{base.vocab_size}) than this run prepares from data.* ({ours.kind}, vocabulary '
        f'{ours.vocab_size}); use the base run\'s data.tokenizer and data source settings.')


def model_config(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer) -> ModelConfig:
  """ModelConfig of `config.model` + `config.lora`; an encoder (model.causal=False) gets one
  extra vocabulary id for [MASK] (lm.train.tasks.mask_token_id)."""
  vocab = tokenizer.vocab_size + (0 if cfg.model.causal else 1)
  return ModelConfig.from_config(cfg.model, vocab_size=vocab,
                                 seq_len=cfg.data.seq_len).with_lora(cfg.lora)


# ---- the optimizer ------------------------------------------------------------------------


def trainable(path) -> bool:
  """With LoRA, what the optimizer updates: the adapters and a classification head."""
  return lora.is_lora(path) or any(str(getattr(p, 'key', p)) == HEAD for p in path)


def build_optimizer(cfg: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """optimizer.py's AdamW chain; with lora.rank > 0 it sees only the trainable parameters
  (the rest get zero updates and no optimizer state)."""
  opt, schedule = optimizer_lib.build_optimizer(cfg.optimizer, cfg.train.steps)
  if cfg.lora.rank > 0:
    opt = train_only(opt, trainable)
  return opt, schedule


def _prune(tree: dict, keep: Callable, path: tuple = ()) -> dict:
  """The nested dict `tree` with only the leaves `keep(path)` selects (empty dicts dropped)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      sub = _prune(v, keep, path + (jax.tree_util.DictKey(k),))
      if sub:
        out[k] = sub
    elif keep(path + (jax.tree_util.DictKey(k),)):
      out[k] = v
  return out


def train_only(inner: optax.GradientTransformation, keep: Callable
               ) -> optax.GradientTransformation:
  """`inner` applied to the parameters `keep(path)` selects; the others get zero updates
  and no optimizer state. (optax.multi_transform does the same, but its MaskedNode
  placeholders do not map onto the parameter shardings; this state is a pruned copy of
  the parameter tree, so the adapters' moments take the adapters' shardings' shape.)"""
  def init(params):
    return inner.init(_prune(params, keep))

  def update(grads, state, params=None):
    updates, state = inner.update(_prune(grads, keep), state,
                                  None if params is None else _prune(params, keep))
    flat = {jax.tree_util.keystr(p): u
            for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    full = jax.tree_util.tree_map_with_path(
        lambda p, g: flat[jax.tree_util.keystr(p)] if keep(p) else jnp.zeros_like(g), grads)
    return full, state

  return optax.GradientTransformation(init, update)


def state_shardings(model_def: ModelDef, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules, cfg: ml_collections.ConfigDict) -> dict:
  """lm.train.state.state_shardings, and for a LoRA optimizer (whose state optax cannot map
  onto the parameters) each moment takes the sharding of the parameter it belongs to."""
  if cfg.lora.rank == 0:
    return state_lib.state_shardings(model_def, optimizer, mesh, rules)
  abstract_params = jax.eval_shape(model_def.init_params, jax.random.key(0))
  param_sh = parallel.shardings_for(model_def.logical_axes(), abstract_params, mesh, rules)
  by_path = {jax.tree_util.keystr(p): sh
             for p, sh in jax.tree_util.tree_flatten_with_path(param_sh)[0]}
  rep = parallel.replicated(mesh)

  def sharding(path, leaf):
    key = jax.tree_util.keystr(path)
    matches = [sh for k, sh in by_path.items() if key.endswith(k)]
    return matches[0] if matches and getattr(leaf, 'ndim', 0) else rep

  opt_sh = jax.tree_util.tree_map_with_path(sharding,
                                            jax.eval_shape(optimizer.init, abstract_params))
  return {'params': param_sh, 'opt_state': opt_sh, 'step': rep, 'rng': rep}


def summary_lines(model_def: ModelDef, optimizer: optax.GradientTransformation,
                  cfg: ml_collections.ConfigDict) -> list[str]:
  """Start-up lines: trainable parameters and the optimizer memory LoRA saves."""
  lines = []
  if cfg.train.task != 'lm':
    lines.append(f'task: {cfg.train.task} (data.format={cfg.data.format}, '
                 f'{"causal" if cfg.model.causal else "bidirectional"} attention)')
  if cfg.init_from:
    lines.append(f'init_from: {cfg.init_from} (optimizer state '
                 f'{"restored" if cfg.init_from_opt_state else "fresh"}; starts at step 0)')
  if cfg.lora.rank > 0:
    params = jax.eval_shape(model_def.init_params, jax.random.key(0))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = sum(math.prod(x.shape) for _, x in leaves)
    all_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for _, x in leaves)
    n_train = sum(math.prod(x.shape) for p, x in leaves if trainable(p))
    opt_bytes = _tree_bytes(jax.eval_shape(optimizer.init, params))
    lines.append(
        f'LoRA rank {cfg.lora.rank} (alpha {cfg.lora.alpha}) on {", ".join(cfg.lora.targets)}: '
        f'trainable {n_train:,} of {total:,} parameters ({n_train / total:.2%}); optimizer '
        f'state {opt_bytes / 2**20:.2f} MiB instead of {2 * all_bytes / 2**20:.2f} MiB '
        f'(saves {(2 * all_bytes - opt_bytes) / 2**20:.2f} MiB)')
  return lines


def _tree_bytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, 'shape'))


# ---- init_from ----------------------------------------------------------------------------


def locate(path: str) -> tuple[pathlib.Path, int]:
  """(checkpoints directory, step) of `init_from`: a workdir (its latest checkpoint), a
  checkpoints directory, or one checkpoints/<step> directory."""
  p = pathlib.Path(os.path.expanduser(path)).resolve()
  candidates = [(p / 'checkpoints', None), (p, None)]
  if p.name.isdigit():
    candidates.insert(0, (p.parent, int(p.name)))
  for directory, step in candidates:
    if directory.is_dir():
      steps = sorted(int(d.name) for d in directory.iterdir() if d.is_dir() and d.name.isdigit()
                     and (d / CONFIG / CONFIG_FILE).is_file())
      if steps:
        if step is None or step in steps:
          return directory, steps[-1] if step is None else step
  raise CheckpointError(f'init_from={path!r} holds no lm checkpoint; give a training workdir, '
                        'its checkpoints/ directory or one checkpoints/<step> directory.')


def base_config(path: str) -> ml_collections.ConfigDict:
  """The resolved config the init_from checkpoint was trained with."""
  directory, step = locate(path)
  text = (directory / str(step) / CONFIG / CONFIG_FILE).read_text(encoding='utf-8')
  return config_lib.from_json(json.dumps(json.loads(text)))


def base_tokenizer(cfg: ml_collections.ConfigDict, log: Log = print) -> Tokenizer:
  """The tokenizer of the init_from run (its data is prepared from the cache)."""
  base = base_config(cfg.init_from)
  if base.data.format == 'text':
    return mixture.prepare_data(base.data, seq_len=base.data.seq_len, log=log).tokenizer
  return supervised.prepare(base.data, seq_len=base.data.seq_len, log=log).tokenizer


def load_init(cfg: ml_collections.ConfigDict, fresh_params: dict, mesh: Mesh, rules,
              shardings: dict, log: Log = print) -> tuple[dict, Any]:
  """(params, opt_state or None) for step 0 of a fine-tune, from `cfg.init_from`;
  `fresh_params` (this run's initialisation) fills what the base lacks.

  The whole base state is restored onto this run's mesh (Orbax, target shardings), then
  its parameters are matched to this model by name: a parameter the base lacks (a new
  classification head, LoRA adapters) keeps its fresh initialisation (logged); a shape
  that differs is an error naming the parameter.
  """
  directory, step = locate(cfg.init_from)
  base = base_config(cfg.init_from)
  base_cfg = ModelConfig.from_config(base.model, seq_len=base.data.seq_len).with_lora(base.lora)
  base_def = ModelDef.create(base_cfg)
  base_opt, _ = build_optimizer(base)
  base_sh = state_shardings(base_def, base_opt, mesh, rules, base)
  shapes = jax.eval_shape(lambda: {
      'params': base_def.init_params(jax.random.key(0)),
      'opt_state': base_opt.init(base_def.init_params(jax.random.key(0))),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.key_data(jax.random.key(0))})
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, base_sh)
  with Checkpointer(directory, read_only=True) as ckpt:
    state, _, _ = ckpt.restore(target, step)
  log(f'init_from: parameters of {directory / str(step)} (step {step})')
  params = _match(state['params'], fresh_params, shardings['params'], log,
                  where=str(directory / str(step)))
  opt_state = None
  if cfg.init_from_opt_state:
    want = jax.tree_util.tree_structure(shardings['opt_state'])
    if jax.tree_util.tree_structure(state['opt_state']) != want:
      raise CheckpointError(f'init_from_opt_state=True: the optimizer state in {directory} has '
                            'another structure than this run\'s optimizer (different optimizer '
                            'settings, head or adapters); set init_from_opt_state=False.')
    opt_state = jax.tree.map(jax.device_put, state['opt_state'], shardings['opt_state'])
  return params, opt_state


def _flat(tree: dict) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p, simple=True, separator='.'): x for p, x in leaves}


def _match(base_params: dict, fresh: dict, shardings: dict, log: Log, *, where: str) -> dict:
  """This model's parameters taken from `base_params` by name (see load_init)."""
  base, ours = _flat(base_params), _flat(fresh)
  extra = [k for k in base if k not in ours]
  if extra:
    shown = ', '.join(extra[:4]) + (', ...' if len(extra) > 4 else '')
    raise CheckpointError(f'init_from: {where} holds parameters this model lacks ({shown}); '
                          'a LoRA run must be merged first (python -m lm.lora_merge), and the '
                          'model settings (model.*, lora.*) must match the base run.')
  for k, x in ours.items():
    if k in base and tuple(base[k].shape) != tuple(x.shape):
      raise CheckpointError(f"init_from: parameter '{k}' has shape {tuple(base[k].shape)} in "
                            f'{where} but {tuple(x.shape)} in this model; make model.* match '
                            f'the base run (its config is {where}/config/config.json).')
  missing = [k for k in ours if k not in base]
  if missing:
    groups = sorted({k.split('.lora.')[0] + '.lora' if '.lora.' in k else k.split('.')[0]
                     for k in missing})
    log(f'init_from: freshly initialised (not in the base checkpoint): {", ".join(groups)}')
  flat_sh = _flat(shardings)
  leaves = jax.tree_util.tree_flatten_with_path(fresh)
  out = [jax.device_put(base[k].astype(x.dtype), flat_sh[k]) if k in base else x
         for k, x in ((jax.tree_util.keystr(p, simple=True, separator='.'), x)
                      for p, x in leaves[0])]
  return jax.tree_util.tree_unflatten(leaves[1], out)
