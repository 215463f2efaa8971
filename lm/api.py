"""A small Python API for notebooks: configs, training, and loading a trained run.

    from lm import api
    config = api.load_config('shakespeare_char', {'train.steps': 100}, train__batch_size=8)
    api.train(config, 'workdirs/demo')            # final metrics
    run = api.load('workdirs/demo')               # the latest checkpoint
    run.evaluate()['eval/loss']; run.generate('ROMEO:', max_new_tokens=50)
    maps_LNTT, tokens = run.attention_maps('ROMEO:')  # per layer and head
    model = api.build_model(config, vocab_size=256)  # a fresh NNX Transformer

experiments/quickstart.ipynb walks through all of it.

Nothing here parses absl flags; heavy imports (jax, the model) happen on first use.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lm import config as config_lib
from lm.config import ConfigDict, ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = 'config.json'  # lm.train.loop.CONFIG_FILE
CHECKPOINT_DIR = 'checkpoints'


# ---- configs -----------------------------------------------------------------------------


def load_config(path_or_name: str | os.PathLike = 'configs/default.py',
                overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> ConfigDict:
  """The ConfigDict of a config file (or a name in configs/, e.g. 'shakespeare_char'), with
  overrides as dotted keys ({'train.steps': 100}) and/or kwargs with '__' for dots."""
  path = _config_path(path_or_name)
  spec = importlib.util.spec_from_file_location(f'_lm_config_{path.stem}', path)
  if spec is None or spec.loader is None:
    raise ConfigError(f'{path}: cannot load it as a Python config file.')
  if str(REPO_ROOT) not in sys.path and (REPO_ROOT / 'configs').is_dir():
    sys.path.append(str(REPO_ROOT))  # config files import `from configs import default`
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} has no get_config(); a config file defines get_config() '
                      'returning a ConfigDict (see configs/default.py).')
  config = module.get_config()
  return override(config, {**(overrides or {}),
                           **{k.replace('__', '.'): v for k, v in kwargs.items()}})


def override(config: ConfigDict, values: Mapping[str, Any]) -> ConfigDict:
  """Sets dotted keys of `config` in place (and returns it); an unknown key or a value of the
  wrong type is a ConfigError naming the key."""
  problems = []
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = config
    try:
      for p in parents:
        node = node[p]
      if not isinstance(node, ConfigDict) or leaf not in node:
        raise KeyError(key)
    except (KeyError, TypeError):
      problems.append(f'{key}: no such config key (configs/default.py lists every key)')
      continue
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      problems.append(f'{key}={value!r}: {e}')
  if problems:
    raise ConfigError(problems)
  return config


def _config_path(path_or_name: str | os.PathLike) -> Path:
  path = Path(path_or_name)
  candidates = [path, REPO_ROOT / path]
  if path.suffix != '.py' and len(path.parts) == 1:
    candidates.append(REPO_ROOT / 'configs' / f'{path}.py')
  for c in candidates:
    if c.is_file():
      return c
  names = sorted(p.stem for p in (REPO_ROOT / 'configs').glob('*.py') if p.stem != '__init__')
  raise ConfigError(f'config {os.fspath(path_or_name)!r} not found; give a config file path or '
                    f'one of the names in configs/: {", ".join(names)}.')


# ---- training ----------------------------------------------------------------------------


def train(config: ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir` like `python -m lm.main`; returns the final
  metrics ('train/loss', 'eval/loss', ..., and 'sample' when train.sample_tokens > 0)."""
  from lm import runtime
  runtime.use_cpu_devices(config.runtime.cpu_devices)  # warns if jax is already imported
  from lm.train import loop
  return loop.train(config, os.fspath(workdir))


def build_model(config: ConfigDict, *, vocab_size: int | None = None, seed: int = 0):
  """A freshly initialised NNX Transformer for `config.model` (no data, no training);
  `vocab_size` is needed when config.model.vocab_size is 0 (the tokenizer's size)."""
  from flax import nnx

  from lm.model import ModelConfig, Transformer
  model_cfg = ModelConfig.from_config(config.model, vocab_size=vocab_size,
                                      seq_len=config.data.seq_len)
  return Transformer(model_cfg, rngs=nnx.Rngs(seed))


# ---- loading a trained run ---------------------------------------------------------------


class Run:
  """A trained run restored from its workdir: `.config`, `.model` (NNX Transformer),
  `.params`, `.tokenizer`, `.step`; `evaluate()` and `generate()`."""

  def __init__(self, *, config: ConfigDict, workdir: Path, step: int, model_def, params: dict,
               data, mesh):
    self.config = config
    self.workdir = workdir
    self.step = step
    self.model_def = model_def
    self.params = params
    self.data = data  # lm.data.PreparedData
    self.tokenizer = data.tokenizer
    self.mesh = mesh
    self._model = None
    self._eval_step = None

  @property
  def model(self):
    """The NNX Transformer with the restored parameters (built on first use)."""
    if self._model is None:
      self._model = self.model_def.merge(self.params)
    return self._model

  def evaluate(self, num_batches: int | None = None) -> dict[str, float]:
    """Validation loss, perplexity and bits/byte on the batches training evaluates on
    (train.eval_batches of train.batch_size rows unless `num_batches` is given)."""
    import jax
    import jax.numpy as jnp

    from lm import parallel
    from lm.train import tasks
    from lm.train.step import byte_lengths, make_eval_step, summarize_eval

    cfg = self.config
    if self._eval_step is None:
      lengths = byte_lengths(self.tokenizer, self.model_def.cfg.vocab_size)
      self._eval_step = make_eval_step(
          self.model_def, mesh=self.mesh, rules=parallel.rules_for(cfg.mesh),
          param_shardings=jax.tree.map(lambda x: x.sharding, self.params),
          batch_sharding=parallel.batch_sharding(self.mesh), byte_lengths_V=jnp.asarray(lengths),
          num_domains=len(cfg.data.mixture), task=cfg.train.task, mlm_rate=cfg.train.mlm_rate)
      if cfg.train.task == 'classify':  # eval/accuracy as well
        self._eval_step = tasks.make_classify_eval_step(
            self.model_def, mesh=self.mesh, rules=parallel.rules_for(cfg.mesh),
            param_shardings=jax.tree.map(lambda x: x.sharding, self.params),
            batch_sharding=parallel.batch_sharding(self.mesh))
    local = self.data.eval_batches(
        batch_size=cfg.train.batch_size // jax.process_count(),
        num_batches=cfg.train.eval_batches if num_batches is None else num_batches,
        process_index=jax.process_index(), process_count=jax.process_count())
    if not local:
      raise ValueError(f'no validation batches in {self.data.packed_path}; the validation '
                       'split is shorter than one batch (raise data.val_fraction).')
    sharding = parallel.batch_sharding(self.mesh)
    sums = [self._eval_step(self.params, parallel.global_batch(b, sharding)) for b in local]
    from lm.train.step import summarize_domains  # per domain when trained on a data.mixture
    return {**summarize_eval(sums),
            **summarize_domains(sums, [entry[0] for entry in cfg.data.mixture])}

  def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
               seed: int = 0) -> str:
    """The continuation of `prompt` (not including it): `max_new_tokens` sampled tokens,
    greedy when temperature <= 0; recomputes the last data.seq_len tokens per step."""
    from lm.train.sample import sample_tokens
    if max_new_tokens < 0:
      raise ValueError(f'max_new_tokens={max_new_tokens} must be >= 0.')
    prompt_ids = self.tokenizer.encode(prompt)
    if not prompt_ids:
      prompt_ids = [self.tokenizer.bos_id]
    ids = sample_tokens(self.model_def, self.params, prompt_ids, num_tokens=max_new_tokens,
                        temperature=temperature, seed=seed, window=self.config.data.seq_len)
    return self.tokenizer.decode(ids)

  def attention_maps(self, text: str):
    """(attention probabilities [layers, heads, T, T], the T token labels) of `text`, cut
    to the model's max_len tokens (lm.inspect draws them as heatmaps)."""
    from lm import inspect
    ids, _ = inspect.encode(self.tokenizer, text, self.model_def.cfg.max_len)
    return (inspect.attention_maps(self.model, ids),
            [inspect.token_label(self.tokenizer, i) for i in ids])

  def __repr__(self) -> str:
    m = self.model_def.cfg
    return (f'Run({str(self.workdir)!r}, step={self.step}, {m.num_layers} layers, '
            f'width {m.width}, {m.param_count():,} parameters)')


def load(workdir: str | os.PathLike, step: int | None = None,
         log: Callable[[str], None] = print) -> Run:
  """Restores checkpoint `step` (default: the latest) of the run in `workdir`, read-only."""
  import jax

  from lm import parallel
  from lm.checkpoint import Checkpointer, CheckpointError
  from lm.model import ModelDef
  from lm.train import finetune
  from lm.train.state import abstract_state

  workdir = Path(workdir).resolve()
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise CheckpointError(f'{config_path} not found: is {workdir} a training workdir '
                          '(lm.api.train or python -m lm.main --workdir=...)?')
  saved = config_lib.from_json(config_path.read_text(encoding='utf-8'))
  added = config_lib.fill_new_keys(saved)  # a run written by an older lm
  if added:
    log(f'{config_path} predates config keys {", ".join(added)}; using their defaults')
  config = _for_devices(saved, jax.device_count())
  cfg = config_lib.resolve(config, num_devices=jax.device_count())
  data = finetune.prepare_data(cfg, log=log, check_base=False)  # documents or records
  model_cfg = finetune.model_config(cfg, data.tokenizer)  # + [MASK] id, head, LoRA
  model_def = ModelDef.create(model_cfg)
  mesh = parallel.build_mesh(cfg.mesh)
  optimizer, _ = finetune.build_optimizer(cfg)
  shardings = finetune.state_shardings(model_def, optimizer, mesh, parallel.rules_for(cfg.mesh),
                                       cfg)
  ckpt_dir = workdir / CHECKPOINT_DIR
  if not ckpt_dir.is_dir():
    raise CheckpointError(f'{ckpt_dir} not found: the run in {workdir} saved no checkpoint yet.')
  with Checkpointer(ckpt_dir, read_only=True) as checkpoints:
    step = checkpoints.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {ckpt_dir}: the run saved none yet.')
    target = abstract_state(model_def, optimizer, cfg.seed, shardings)
    state, _, _ = checkpoints.restore(target, step)
  return Run(config=cfg, workdir=workdir, step=step, model_def=model_def,
             params=state['params'], data=data, mesh=mesh)


def _for_devices(config: ConfigDict, num_devices: int) -> ConfigDict:
  """The run's mesh when it fits `num_devices`; else the same fsdp/expert/tensor split (or
  none) with data parallelism over the rest on one slice, so a run trained elsewhere loads."""
  axes = config_lib.MESH_AXES
  sizes = [config.mesh.get(a, 1) * config.mesh.get(f'dcn_{a}', 1) for a in axes]
  if all(config.mesh.get(a, 1) > 0 and config.mesh.get(f'dcn_{a}', 1) == 1 for a in axes) and (
      math.prod(sizes) == num_devices):
    return config
  model_axes = [a for a in axes if a != 'data']
  keep = math.prod(sizes[axes.index(a)] for a in model_axes)
  for a in axes:  # a hybrid mesh becomes a plain one: the same axis sizes, one granule
    if f'dcn_{a}' in config.mesh:
      config.mesh[f'dcn_{a}'] = 1
  for a, s in zip(axes, sizes, strict=True):
    if a in config.mesh and a != 'data':
      config.mesh[a] = s if keep >= 1 and num_devices % keep == 0 else 1
  config.mesh.data = -1
  return config
