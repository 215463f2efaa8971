"""A small Python API for notebooks: configs, training, and loading a trained run.

    from lm import api
    config = api.load_config('shakespeare_char', {'train.steps': 100}, train__batch_size=8)
    api.train(config, 'workdirs/demo')            # final metrics
    run = api.load('workdirs/demo')               # the latest checkpoint
    run.evaluate()['eval/loss']; run.generate('ROMEO:', max_new_tokens=50)
    maps_LNTT, tokens = run.attention_maps('ROMEO:')  # per layer and head
    model = api.build_model(config, vocab_size=256)  # a fresh NNX Transformer

experiments/quickstart.ipynb walks through all of it. Nothing here parses absl flags;
`api.load` is lm.run.load_run (the run's own config and tokenizer, parameters only) with
the notebook conveniences on top.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lm import config as config_lib
from lm import parallel, runtime
from lm import workdir as workdir_lib
from lm.config import ConfigDict, override
from lm.errors import ConfigError, DataError
from lm.model import ModelConfig, ModelDef, Transformer
from lm.model.losses import byte_lengths
from lm.run import load_run
from lm.tools import inspect
from lm.tools.run_data import run_data
from lm.train import tasks
from lm.train import train as train_run
from lm.train.sample import sample_tokens
from lm.train.step import make_eval_step, summarize_domains, summarize_eval

REPO_ROOT = Path(__file__).resolve().parent.parent
Log = Callable[[str], None]


def load_config(path_or_name: str | os.PathLike = 'configs/default.py',
                overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> ConfigDict:
  """The ConfigDict of a config file (or a name in configs/, e.g. 'shakespeare_char'), with
  overrides as dotted keys ({'train.steps': 100}) and/or kwargs with '__' for dots."""
  path = _config_path(path_or_name)
  if str(REPO_ROOT) not in sys.path and (REPO_ROOT / 'configs').is_dir():
    sys.path.append(str(REPO_ROOT))  # config files import `from configs import default`
  config = config_lib.load_file(path)
  return override(config, {**(overrides or {}),
                           **{k.replace('__', '.'): v for k, v in kwargs.items()}})


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
  runtime.apply(config.runtime, config.data.cache_dir)  # before the first device is used
  return train_run(config, os.fspath(workdir))


def build_model(config: ConfigDict, *, vocab_size: int | None = None, seed: int = 0
                ) -> Transformer:
  """A freshly initialised NNX Transformer for `config.model` (no data, no training);
  `vocab_size` is needed when config.model.vocab_size is 0 (the tokenizer's size)."""
  model_cfg = ModelConfig.from_config(config.model, vocab_size=vocab_size,
                                      seq_len=config.data.seq_len)
  return Transformer(model_cfg, rngs=nnx.Rngs(seed))


# ---- a trained run -----------------------------------------------------------------------


class Run:
  """A trained run: `.config`, `.model` (NNX Transformer), `.params`, `.tokenizer`, `.step`;
  `evaluate()`, `generate()` and `attention_maps()`. `.data` (the run's data, prepared on
  first use) is needed by `evaluate()` only."""

  def __init__(self, *, config: ConfigDict, workdir, step: int, model_def: ModelDef,
               params: dict, mesh, tokenizer=None, data=None, log: Log = print):
    if tokenizer is None and data is None:
      raise ValueError('a Run needs its tokenizer (or its prepared data)')
    self.config = config
    self.workdir = workdir
    self.step = step
    self.model_def = model_def
    self.params = params
    self.tokenizer = data.tokenizer if tokenizer is None else tokenizer
    self.mesh = mesh
    self._data = data
    self._log = log
    self._model = None
    self._eval_step = None

  @property
  def data(self):
    """The run's data (lm.data.PreparedData, a mixture's or sft/classify records), prepared
    from its config with its tokenizer on first use."""
    if self._data is None:
      self._data = run_data(self.config, self.tokenizer, self._log, where=str(self.workdir))
    return self._data

  @property
  def model(self) -> Transformer:
    """The NNX Transformer with the restored parameters (built on first use)."""
    if self._model is None:
      self._model = self.model_def.merge(self.params)
    return self._model

  def evaluate(self, num_batches: int | None = None) -> dict[str, float]:
    """Validation loss, perplexity and bits/byte on the batches training evaluates on
    (train.eval_batches of train.batch_size rows unless `num_batches` is given)."""
    cfg = self.config
    rules = parallel.rules_for(cfg.mesh)
    shardings = jax.tree.map(lambda x: x.sharding, self.params)
    if self._eval_step is None:
      if cfg.train.task == 'classify':  # eval/accuracy as well
        self._eval_step = tasks.make_classify_eval_step(
            self.model_def, mesh=self.mesh, rules=rules, param_shardings=shardings,
            batch_sharding=parallel.batch_sharding(self.mesh))
      else:
        lengths = byte_lengths(self.tokenizer, self.model_def.cfg.vocab_size)
        self._eval_step = make_eval_step(
            self.model_def, mesh=self.mesh, rules=rules, param_shardings=shardings,
            batch_sharding=parallel.batch_sharding(self.mesh),
            byte_lengths_V=jnp.asarray(lengths), num_domains=len(cfg.data.mixture),
            task=cfg.train.task, mlm_rate=cfg.train.mlm_rate)
    local = self.data.eval_batches(
        batch_size=cfg.train.batch_size // jax.process_count(),
        num_batches=cfg.train.eval_batches if num_batches is None else num_batches,
        process_index=jax.process_index(), process_count=jax.process_count())
    if not local:
      raise DataError(f'no validation batches for {self.workdir}: the validation split is '
                      'shorter than one batch (raise data.val_fraction).')
    sharding = parallel.batch_sharding(self.mesh)
    sums = [self._eval_step(self.params, parallel.global_batch(b, sharding)) for b in local]
    # per domain when trained on a data.mixture
    return {**summarize_eval(sums),
            **summarize_domains(sums, [entry[0] for entry in cfg.data.mixture])}

  def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
               seed: int = 0) -> str:
    """The continuation of `prompt` (not including it): `max_new_tokens` sampled tokens,
    greedy when temperature <= 0; recomputes the last data.seq_len tokens per step."""
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
    to the model's max_len tokens (lm.tools.inspect draws them as heatmaps)."""
    ids, _ = inspect.encode(self.tokenizer, text, self.model_def.cfg.max_len)
    return (inspect.attention_maps(self.model, ids),
            [inspect.token_label(self.tokenizer, i) for i in ids])

  def __repr__(self) -> str:
    m = self.model_def.cfg
    return (f'Run({str(self.workdir)!r}, step={self.step}, {m.num_layers} layers, '
            f'width {m.width}, {m.param_count():,} parameters)')


def load(workdir: str | os.PathLike, step: int | None = None, log: Log = print) -> Run:
  """Restores checkpoint `step` (default: the latest) of the run in `workdir`, read-only,
  on the run's own mesh fitted to the devices here (lm.run.load_run)."""
  run = load_run(workdir, step, mesh='run', log=log)
  return Run(config=run.config, workdir=workdir_lib.path(workdir), step=run.step,
             model_def=run.model_def, params=run.params, mesh=run.mesh,
             tokenizer=run.tokenizer, log=log)
