"""The one constructor of a training run's pieces: its data, model, optimizer (the LoRA
adapters-only one included), train-state shardings and jit'd train and eval steps.

The Trainer (lm/train/loop.py), `lm.plan` and `lm.bench` all build through `build()`, so
the planner and the benchmark compile exactly the program `python -m lm.main` runs: the
same optimizer, the same shardings and the batch layout of the preset's 'batch' rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from lm import config as config_lib
from lm import parallel
from lm import run as run_lib
from lm import workdir as workdir_lib
from lm.data import mixture, supervised
from lm.data import preference as preference_data
from lm.data.tokenizers import Tokenizer
from lm.errors import DataError
from lm.model import ModelDef
from lm.model.losses import byte_lengths
from lm.train import optimizer as optimizer_lib
from lm.train import preference, tasks
from lm.train import state as state_lib
from lm.train.step import FROZEN_TASKS, make_eval_step, make_train_step

Log = Callable[[str], None]
ConfigDict = ml_collections.ConfigDict


# ---- config and data ----------------------------------------------------------------------


def resolve(config: ConfigDict, *, num_devices: int | None = None,
            num_granules: int | None = None) -> ConfigDict:
  """The validated config with derived values filled in, for `num_devices` devices
  (default: every device of the job) in `num_granules` slices/processes."""
  if num_devices is None:
    num_devices = jax.device_count()
    num_granules = parallel.num_granules() if num_granules is None else num_granules
  return config_lib.resolve(config, num_devices=num_devices, num_granules=num_granules)


def prepare_data(cfg: ConfigDict, *, base_tokenizer: Tokenizer | None = None, log: Log = print):
  """The run's data: packed documents (data.format='text', one source or a data.mixture)
  or sft/classify records. A fine-tune passes the `base_tokenizer` of its init_from run
  (lm.train.finetune.base_tokenizer): records are tokenized with it, and documents'
  tokenizer must equal it."""
  if cfg.data.format == 'text':
    data = mixture.prepare_data(cfg.data, seq_len=cfg.data.seq_len, log=log)
    if base_tokenizer is not None:
      try:
        workdir_lib.check_same_tokenizer(base_tokenizer, data.tokenizer,
                                         data.val_text_sample(4000),
                                         where=f'init_from={cfg.init_from!r}')
      except DataError as e:
        raise DataError(f"{e} (a fine-tune must use the base run's data.tokenizer and data "
                        'source settings)') from e
    return data
  if cfg.data.format == 'preference':
    return preference_data.prepare(cfg.data, seq_len=cfg.data.seq_len, tokenizer=base_tokenizer,
                                   log=log)
  return supervised.prepare(cfg.data, seq_len=cfg.data.seq_len, tokenizer=base_tokenizer,
                            log=log)


# ---- optimizer and shardings --------------------------------------------------------------


def build_optimizer(cfg: ConfigDict, logical_axes=None
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """optimizer.py's AdamW or Muon chain; with lora.rank > 0 it sees only the trainable
  parameters (adapters and a classification head; the rest get zero updates and no state)."""
  opt, schedule = optimizer_lib.build_optimizer(cfg.optimizer, cfg.train.steps, logical_axes)
  if cfg.lora.rank > 0:
    opt = optimizer_lib.train_only(opt, optimizer_lib.lora_trainable)
  return opt, schedule


def state_shardings(model_def: ModelDef, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules, cfg: ConfigDict) -> dict:
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


# ---- the whole set-up ---------------------------------------------------------------------


@dataclasses.dataclass
class TrainSetup:
  """Everything a train step needs, built from one resolved config."""

  config: ConfigDict  # resolved; model.vocab_size filled in (the model's, [MASK] included)
  mesh: Mesh
  rules: tuple
  model_def: ModelDef
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: dict  # of the train state: params, opt_state, step, rng
  batch_sharding: NamedSharding  # [K, B, ...] batches of one dispatch
  eval_batch_sharding: NamedSharding  # [B, ...] batches
  train_step: Callable  # jit(state, batches[K, B, T]) -> (state, metrics[K]); donates state
  # dpo/distill: the frozen model the steps run too (lm/train/frozen.py fills its params)
  frozen: Frozen = dataclasses.field(default_factory=lambda: Frozen(params={}))

  def init_state(self) -> dict:
    """A fresh train state (from config.seed), created in its sharded layout."""
    return state_lib.init_state(self.model_def, self.optimizer, self.config.seed, self.shardings)

  def abstract_state(self) -> dict:
    """ShapeDtypeStructs (with shardings) of the train state: what a restore fills in."""
    return state_lib.abstract_state(self.model_def, self.optimizer, self.config.seed,
                                    self.shardings)

  @property
  def batch_ways(self) -> int:
    """Devices one batch's rows are split over (the product of the 'batch' rule's axes)."""
    axes = self.batch_sharding.spec[1] or ()
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[a] for a in axes)

  def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (shape, dtype) of one dispatch's global batches, as the data gives them
    for this config's task (the argument the train step is compiled for)."""
    cfg = self.config
    k, b, t = cfg.train.steps_per_dispatch, cfg.train.batch_size, cfg.data.seq_len
    names = ['inputs', 'positions', 'segment_ids']
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {n: ((k, b, t), jnp.int32) for n in names}
    if cfg.train.task == 'classify':
      shapes['lengths'] = shapes['labels'] = ((k, b), jnp.int32)
      return shapes
    shapes['targets'] = ((k, b, t), jnp.int32)
    shapes['weights'] = ((k, b, t), jnp.float32)
    if cfg.data.format == 'text' and cfg.data.mixture:
      shapes['domains'] = ((k, b, t), jnp.int32)
    if cfg.train.task == 'dpo' and cfg.train.dpo.reference == 'precomputed':
      shapes['ref_logps'] = ((k, b, preference_data.max_pairs(t), 2), jnp.float32)
    if cfg.train.task == 'distill' and cfg.train.distill.offline_top_k:
      top = cfg.train.distill.offline_top_k
      shapes['teacher_ids'] = ((k, b, t, top), jnp.int32)
      shapes['teacher_logits'] = ((k, b, t, top), jnp.float32)
    return shapes

  def abstract_batches(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The batches as ShapeDtypeStructs with the train step's batch sharding (lm.plan)."""
    return {n: jax.ShapeDtypeStruct(s, d, sharding=self.batch_sharding)
            for n, (s, d) in self.batch_shapes().items()}

  def synthetic_batches(self, rng: np.random.Generator) -> dict[str, jax.Array]:
    """Random batches of the right shapes, placed as the train step takes them (lm.bench):
    full rows of random tokens, every target weighted."""
    cfg, vocab = self.config, self.model_def.cfg.vocab_size
    shapes = self.batch_shapes()
    k, b, t = shapes['inputs'][0]
    tokens = rng.integers(tasks.FIRST_REAL_TOKEN, vocab, (k, b, t + 1), dtype=np.int32)
    host = {'inputs': tokens[..., :-1], 'segment_ids': np.ones((k, b, t), np.int32),
            'positions': np.broadcast_to(np.arange(t, dtype=np.int32), (k, b, t)).copy()}
    if 'labels' in shapes:
      host['lengths'] = np.full((k, b), t, np.int32)
      host['labels'] = rng.integers(0, max(cfg.model.num_classes, 1), (k, b), dtype=np.int32)
    else:
      host['targets'] = tokens[..., 1:]
      host['weights'] = np.ones((k, b, t), np.float32)
    for name, (shape, dtype) in shapes.items():  # domains, precomputed reference, top-k
      if name not in host:
        host[name] = np.zeros(shape, dtype)
    return jax.device_put(host, self.batch_sharding)

  def eval_step(self, tokenizer: Tokenizer) -> Callable:
    """jit(params, batch) -> sums the eval summary reads (lm.train.step.summarize_eval);
    per domain for a data.mixture run, with accuracy for a classifier."""
    cfg = self.config
    if cfg.train.task == 'classify':
      return tasks.make_classify_eval_step(
          self.model_def, mesh=self.mesh, rules=self.rules,
          param_shardings=self.shardings['params'], batch_sharding=self.eval_batch_sharding)
    if cfg.train.task == 'dpo':  # the DPO loss and rewards of the validation pairs
      step = preference.make_eval_step(
          self.model_def, cfg.train.dpo, num_pairs=preference_data.max_pairs(cfg.data.seq_len),
          lora=cfg.lora.rank > 0, mesh=self.mesh, rules=self.rules,
          param_shardings=self.shardings['params'],
          frozen_shardings=self.frozen.shardings_or(self.mesh),
          batch_sharding=self.eval_batch_sharding)
      return WithFrozen(step, self.frozen, position=1)
    return make_eval_step(
        self.model_def, mesh=self.mesh, rules=self.rules,
        param_shardings=self.shardings['params'], batch_sharding=self.eval_batch_sharding,
        byte_lengths_V=jnp.asarray(byte_lengths(tokenizer, self.model_def.cfg.vocab_size)),
        num_domains=len(cfg.data.mixture), task=cfg.train.task, mlm_rate=cfg.train.mlm_rate)


def build(cfg: ConfigDict, *, vocab_size: int, devices: Sequence[Any] | None = None
          ) -> TrainSetup:
  """The train set-up of the resolved config `cfg` (see `resolve`) for a tokenizer of
  `vocab_size` ids on `devices` (default: every device). Builds shapes and functions
  only: no parameter is allocated until `init_state()` is called."""
  cfg = ConfigDict(cfg.to_dict())
  model_cfg = run_lib.model_config(cfg, vocab_size)  # + [MASK] id, head, LoRA
  cfg.model.vocab_size = model_cfg.vocab_size  # the resolved config records it
  mesh = parallel.build_mesh(cfg.mesh, devices=None if devices is None else list(devices))
  rules = parallel.rules_for(cfg.mesh)  # the preset with mesh.rules on top
  model_def = ModelDef.create(model_cfg)
  optimizer, schedule = build_optimizer(cfg, model_def.logical_axes())
  shardings = state_shardings(model_def, optimizer, mesh, rules, cfg)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1, rules=rules)
  frozen = frozen_model(cfg, model_def, shardings, mesh, rules)
  train_step = make_train_step(
      model_def, optimizer, schedule, grad_accum=cfg.train.grad_accum, mesh=mesh, rules=rules,
      shardings=shardings, batch_sharding=batch_sharding, task=cfg.train.task,
      mlm_rate=cfg.train.mlm_rate, train_cfg=cfg.train, frozen_def=frozen.model_def,
      frozen_shardings=frozen.shardings_or(mesh),
      num_pairs=preference_data.max_pairs(cfg.data.seq_len))
  if cfg.train.task in FROZEN_TASKS:
    train_step = WithFrozen(train_step, frozen, position=2)
  return TrainSetup(config=cfg, mesh=mesh, rules=rules, model_def=model_def,
                    optimizer=optimizer, schedule=schedule, shardings=shardings,
                    batch_sharding=batch_sharding,
                    eval_batch_sharding=parallel.batch_sharding(mesh, rules=rules),
                    train_step=train_step, frozen=frozen)


# ---- the frozen model of dpo / distill ----------------------------------------------------


@dataclasses.dataclass
class Frozen:
  """The parameters a dpo/distill step takes besides the trained ones: DPO's reference
  (this model's definition) or distillation's teacher (its own), placed by this run's
  rules. `params` is {} when the step needs none (LoRA's reference is the base with the
  adapters off, SimPO has none, precomputed or offline values come in the batch); else it
  is None until lm.train.frozen.attach loads it."""

  model_def: ModelDef | None = None
  shardings: Any = None
  params: Any = None

  def shardings_or(self, mesh: Mesh):
    return parallel.replicated(mesh) if self.shardings is None else self.shardings

  def abstract(self):
    if self.model_def is None:
      return {}
    shapes = jax.eval_shape(self.model_def.init_params, jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.shardings)


class WithFrozen:
  """A jit'd function called without its frozen-parameters argument (inserted at
  `position`); `lower` takes the same arguments and lowers for the frozen shapes."""

  def __init__(self, fn: Callable, frozen: Frozen, position: int):
    self.fn, self.frozen, self.position = fn, frozen, position

  def _args(self, args: tuple, frozen) -> tuple:
    return (*args[:self.position], frozen, *args[self.position:])

  def __call__(self, *args):
    if self.frozen.params is None:
      raise RuntimeError('the frozen model (DPO reference or teacher) is not loaded; call '
                         'lm.train.frozen.attach first')
    return self.fn(*self._args(args, self.frozen.params))

  def lower(self, *args):
    return self.fn.lower(*self._args(args, self.frozen.abstract()))


def frozen_model(cfg: ConfigDict, model_def: ModelDef, shardings: dict, mesh: Mesh,
                 rules) -> Frozen:
  """What the step of `cfg.train.task` takes as frozen parameters (see Frozen)."""
  task, dpo, distill = cfg.train.task, cfg.train.dpo, cfg.train.distill
  if (task == 'dpo' and dpo.loss not in config_lib.REFERENCE_FREE_LOSSES
      and dpo.reference == 'model' and not cfg.lora.rank):
    return Frozen(model_def=model_def, shardings=shardings['params'])
  if task == 'distill' and not distill.offline_top_k:
    teacher_def = teacher_model_def(distill.teacher)
    return Frozen(model_def=teacher_def,
                  shardings=run_lib.param_shardings(teacher_def, mesh, rules))
  return Frozen(params={})


def teacher_model_def(teacher: str) -> ModelDef:
  """The teacher run's model, from its workdir's config.json and tokenizer."""
  workdir_lib.check_trained(teacher)
  tcfg = workdir_lib.read_config(teacher)
  return ModelDef.create(run_lib.model_config(tcfg, workdir_lib.load_tokenizer(teacher).vocab_size))


def summary_lines(model_def: ModelDef, optimizer: optax.GradientTransformation,
                  cfg: ConfigDict) -> list[str]:
  """Start-up lines: the task, init_from, trainable parameters and the optimizer memory
  LoRA saves."""
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
    n_train = sum(math.prod(x.shape) for p, x in leaves if optimizer_lib.lora_trainable(p))
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
