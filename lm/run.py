"""A trained run as one object: `load_run` is the only loader and `write_run` the only writer
of whole runs (lm.convert, lm.lora_merge, lm.btm and any other tool that makes a run).

`load_run` reads the workdir's own config.json and tokenizer/ (it never prepares data),
restores only the parameters of a checkpoint (never the optimizer's moments) onto the
placement asked for, and works for every kind of run training produces: dense, MoE, LoRA
(adapters included), a classification head, an encoder, imported or merged runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lm import config as config_lib
from lm import parallel
from lm import workdir as workdir_lib
from lm.checkpoint import Checkpointer
from lm.config import ConfigDict
from lm.data.tokenizers import Tokenizer
from lm.errors import WorkdirError
from lm.model import ModelConfig, ModelDef, Transformer
from lm.model.quantize import quantize as quantize_params

Placement = Mesh | Literal['run'] | None


def model_config(config: ConfigDict, vocab_size: int) -> ModelConfig:
  """ModelConfig of `config.model` + `config.lora` for a tokenizer of `vocab_size` ids; an
  encoder (model.causal=False) gets one extra id for [MASK] (lm.train.tasks.mask_token_id)."""
  vocab = vocab_size + (0 if config.model.causal else 1)
  return ModelConfig.from_config(config.model, vocab_size=vocab,
                                 seq_len=config.data.seq_len).with_lora(config.lora)


def place_params(model_def: ModelDef, params: dict, mesh: Mesh, rules) -> dict:
  """The parameters placed on `mesh` as the logical-axis `rules` split them."""
  return jax.device_put(params, param_shardings(model_def, mesh, rules))


def param_shardings(model_def: ModelDef, mesh: Mesh, rules) -> dict:
  """NamedShardings of the model's parameters (quantized or not) from the rules."""
  abstract = jax.eval_shape(model_def.init_params, jax.random.key(0))
  return parallel.shardings_for(model_def.logical_axes(), abstract, mesh, rules)


def fit_mesh_config(config: ConfigDict, num_devices: int) -> ConfigDict:
  """The run's config with a mesh for `num_devices`: its own when it fits, else the same
  fsdp/expert/tensor split (or none, when that does not divide the devices) with data
  parallelism over the rest on one slice, so a run trained elsewhere loads here."""
  config = ConfigDict(config.to_dict())
  axes = parallel.MESH_AXES
  sizes = [config.mesh.get(a, 1) * config.mesh.get(f'dcn_{a}', 1) for a in axes]
  if (all(config.mesh.get(a, 1) > 0 and config.mesh.get(f'dcn_{a}', 1) == 1 for a in axes)
      and math.prod(sizes) == num_devices):
    return config
  keep = math.prod(s for a, s in zip(axes, sizes, strict=True) if a != 'data')
  for a in axes:  # a hybrid mesh becomes a plain one: the same axis sizes, one granule
    if f'dcn_{a}' in config.mesh:
      config.mesh[f'dcn_{a}'] = 1
  for a, s in zip(axes, sizes, strict=True):
    if a in config.mesh and a != 'data':
      config.mesh[a] = s if num_devices % keep == 0 else 1
  config.mesh.data = -1
  return config_lib.resolve(config, num_devices=num_devices, files=False)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run's config, model and parameters (placed on `mesh`, or one device)."""

  workdir: str
  config: ConfigDict
  model_def: ModelDef
  params: dict
  tokenizer: Tokenizer
  step: int
  mesh: Mesh | None = None

  @property
  def model(self) -> Transformer:
    """The NNX module with the parameters merged in."""
    return self.model_def.merge(self.params)

  @property
  def rules(self) -> tuple:
    """The logical-axis rules the run was trained with (mesh.preset + mesh.rules)."""
    return parallel.rules_for(self.config.mesh)


def load_run(workdir: str | os.PathLike, step: int | None = None, *,
             mesh: Placement = None, quantize: str = 'none',
             log: Callable[[str], None] | None = None) -> Run:
  """Restores the parameters of checkpoint `step` (default: the latest) of `workdir`.

  `mesh`: None places them on one device; a Mesh splits them by the run's logical-axis
  rules; 'run' builds the run's own training mesh fitted to the devices here (what
  evaluation with the run's batch layout needs). quantize='int8' gives int8 weights.
  """
  workdir_lib.check_trained(workdir)
  config = workdir_lib.read_config(workdir, log=log)
  tokenizer = workdir_lib.load_tokenizer(workdir)
  if mesh == 'run':
    config = fit_mesh_config(config, jax.device_count())
    mesh = parallel.build_mesh(config.mesh)
  model_def = ModelDef.create(model_config(config, tokenizer.vocab_size))
  rules = parallel.rules_for(config.mesh)
  shapes = jax.eval_shape(model_def.init_params, jax.random.key(0))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, shapes)
  else:
    shardings = param_shardings(model_def, mesh, rules)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
  with Checkpointer(workdir_lib.checkpoint_dir(workdir), read_only=True) as checkpoints:
    params, step = checkpoints.restore_params(target, step)
  if quantize != 'none':
    model_def, params = quantize_params(model_def, params, quantize)
    if mesh is not None:
      params = place_params(model_def, params, mesh, rules)
  return Run(workdir=workdir_lib.name(workdir), config=config, model_def=model_def,
             params=params, tokenizer=tokenizer, step=step, mesh=mesh)


def write_run(workdir: str | os.PathLike, config: ConfigDict, params: dict,
              tokenizer: Tokenizer, *, step: int = 0, files: Mapping[str, str] | None = None,
              flag: str = '--out') -> None:
  """Writes a new run: config.json, tokenizer/, and checkpoint `step` holding `params`
  (checked against the model `config` describes) with no optimizer state, so training
  it (`python -m lm.main --workdir=...`) starts a fresh optimizer from these weights.
  `files` are extra text files (name -> text), e.g. a config.py. Refuses a non-empty
  workdir (nothing is overwritten); on failure the half-written workdir is removed."""
  workdir_lib.check_new(workdir, flag)
  model_def = ModelDef.create(model_config(config, tokenizer.vocab_size))
  expected = jax.eval_shape(model_def.init_params, jax.random.key(0))
  check_shapes(params, expected)
  config = ConfigDict(config.to_dict())
  # Recorded as training records it: the model's whole vocabulary (an encoder's [MASK] id
  # included), which model_config then takes as it is.
  config.model.vocab_size = model_def.cfg.vocab_size
  _, train_key = jax.random.split(jax.random.key(config.seed))  # as a fresh state splits it
  state = {'params': params, 'step': jnp.asarray(step, jnp.int32),
           'rng': jax.random.key_data(train_key)}
  existed = workdir_lib.path(workdir).exists()
  try:
    workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
    workdir_lib.save_tokenizer(workdir, tokenizer)
    with Checkpointer(workdir_lib.checkpoint_dir(workdir), async_save=False) as checkpoints:
      checkpoints.save(step, state, data_state={}, config_json=config_lib.to_json(config))
    for name, text in (files or {}).items():  # a name may hold a subdirectory: 'a/b.json'
      target = workdir_lib.path(workdir) / name
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_text(text)
    workdir_lib.write_config(workdir, config)  # last: a workdir with config.json is complete
  except BaseException:
    if not existed:
      workdir_lib.remove_tree(workdir_lib.path(workdir))
    raise


def check_shapes(params: Any, expected: Any, prefix: str = '') -> None:
  """Every parameter the model expects is there with its shape (and nothing else is)."""
  if isinstance(expected, Mapping):
    if not isinstance(params, Mapping):
      raise WorkdirError(f'parameter {prefix or "tree"}: expected a dict of parameters')
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
      raise WorkdirError(f'parameters under {prefix or "the root"} do not match the model: '
                         f'missing {missing}, unexpected {extra}')
    for k in expected:
      check_shapes(params[k], expected[k], f'{prefix}.{k}' if prefix else str(k))
    return
  if tuple(params.shape) != tuple(expected.shape):
    raise WorkdirError(f'parameter {prefix} has shape {tuple(params.shape)} but the model '
                       f'expects {tuple(expected.shape)}')

