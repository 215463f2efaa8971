"""Loads the frozen model a dpo/distill run needs before its first step (`attach`).

  dpo      the reference is the initial model: init_from's parameters (restored again on
           resume, so a resumed run compares to the same reference), or this config's
           seeded initialisation without init_from. With LoRA, SimPO or ORPO nothing is
           loaded.
           train.dpo.reference='precomputed': the reference's log-probabilities of every
           train and validation pair are computed once here and ride in the batches; the
           reference's parameters are then dropped.
  distill  the teacher (train.distill.teacher) through lm.run.load_run, its tokenizer
           checked against the data's, its parameters placed by this run's rules. With
           train.distill.offline_top_k = k the teacher's top-k logits of every training row
           are computed once into the workdir (distill_topk/, reused on resume) and the
           teacher is dropped; batches then carry them (OfflineTopKData).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from lm import run as run_lib
from lm import workdir as workdir_lib
from lm.config import REFERENCE_FREE_LOSSES
from lm.data import loader, packing
from lm.data import preference as preference_data
from lm.errors import ConfigError, DataError
from lm.train import distill, finetune, preference
from lm.train.build import TrainSetup

Log = Callable[[str], None]
TOPK_DIR = 'distill_topk'


def attach(setup: TrainSetup, data: Any, workdir: str, log: Log = print) -> Any:
  """Fills `setup.frozen.params` (or the data) as the task needs; returns the data the run
  trains on (the same object, or offline distillation's wrapper of it)."""
  cfg = setup.config
  if cfg.train.task == 'dpo':
    dpo = cfg.train.dpo
    if dpo.loss in REFERENCE_FREE_LOSSES or (cfg.lora.rank and dpo.reference == 'model'):
      return data  # reference-free, or the base is the policy with its adapters off
    params = initial_params(setup, log)
    if dpo.reference == 'precomputed':
      precompute_reference(setup, data, params, log)
    else:
      setup.frozen.params = params
    return data
  if cfg.train.task == 'distill':
    teacher, shardings = load_teacher(setup, data, log)
    if cfg.train.distill.offline_top_k:
      return OfflineTopKData.build(setup, data, teacher, shardings, workdir, log)
    setup.frozen.params = teacher.params
  return data


def initial_params(setup: TrainSetup, log: Log) -> dict:
  """The parameters training starts from: init_from's (matched to this model as a
  fine-tune's are) or the seeded initialisation."""
  cfg = setup.config
  fresh = setup.init_state()['params']
  if not cfg.init_from:
    log('dpo: the reference is the initial (random) model: set init_from to tune a trained one')
    return fresh
  params, _ = finetune.load_init(cfg, fresh, setup.mesh, setup.shardings, setup.optimizer,
                                 log=lambda msg: log(f'dpo reference: {msg}'))
  return params


def _padded_batches(rows_N: np.ndarray, rows_per_batch: int, to_batch: Callable):
  """(start, count, batch) over `rows_N` in order; the last batch padded with zero rows."""
  for start in range(0, len(rows_N), rows_per_batch):
    chunk = rows_N[start:start + rows_per_batch]
    count = len(chunk)
    if count < rows_per_batch:
      chunk = np.concatenate([chunk, np.zeros((rows_per_batch - count, *chunk.shape[1:]),
                                              chunk.dtype)])
    yield start, count, to_batch(chunk)


def _single_process(what: str) -> None:
  if jax.process_count() > 1:
    raise ConfigError([f'{what} runs in one process only (it computes over every row on this '
                       'host); train with one process or turn it off.'])


def precompute_reference(setup: TrainSetup, data: Any, params: dict, log: Log) -> None:
  """Attaches the reference's log-probabilities of every pair of both splits to `data`."""
  _single_process("train.dpo.reference='precomputed'")
  cfg = setup.config
  num_pairs = data.num_pairs
  logps = preference.make_logps_fn(setup.model_def, num_pairs=num_pairs, mesh=setup.mesh,
                                   rules=setup.rules, param_shardings=setup.shardings['params'],
                                   batch_sharding=setup.eval_batch_sharding)
  for name in ('train', 'validation'):
    rows = data.rows(name)
    out = np.zeros((len(rows), num_pairs, 2), np.float32)
    for start, count, batch in _padded_batches(rows, cfg.train.batch_size,
                                               preference_data.preference_batch):
      result = logps(params, jax.device_put(batch, setup.eval_batch_sharding))
      out[start:start + count] = np.asarray(result)[:count]
    data.set_reference(name, out)
  log(f'dpo: reference log-probabilities precomputed for {len(data.rows("train"))} train and '
      f'{len(data.rows("validation"))} validation rows')


def load_teacher(setup: TrainSetup, data: Any, log: Log) -> tuple[run_lib.Run, Any]:
  """(the teacher run, its parameter shardings): on this run's mesh, split by this run's
  rules; its tokenizer must be the data's."""
  teacher = setup.config.train.distill.teacher
  run = run_lib.load_run(teacher, mesh=setup.mesh)
  workdir_lib.check_same_tokenizer(
      run.tokenizer, data.tokenizer, data.val_text_sample(4000),
      where=f'train.distill.teacher={teacher!r} (a teacher must use the tokenizer of the '
            "student's data)")
  shardings = setup.frozen.shardings or run_lib.param_shardings(run.model_def, setup.mesh,
                                                                setup.rules)
  m = run.model_def.cfg
  log(f'distill: teacher {run.workdir} step {run.step}: {m.num_layers} layers, width {m.width}, '
      f'{m.param_count():,} parameters')
  return dataclasses.replace(run, params=jax.device_put(run.params, shardings)), shardings


class OfflineTopKData:
  """Text data whose training batches carry the teacher's top-k logits per token
  (teacher_ids, teacher_logits [B, T, k]), read from arrays computed once; rows are drawn
  in the order the plain data's iterator draws them. Evaluation is the plain data's."""

  def __init__(self, data: Any, rows_N2L: np.ndarray, ids_NTK: np.ndarray,
               logits_NTK: np.ndarray):
    self.data, self.tokenizer, self.seq_len = data, data.tokenizer, data.seq_len
    self.stats = getattr(data, 'stats', {})
    self._rows, self._ids, self._logits = rows_N2L, ids_NTK, logits_NTK

  @classmethod
  def build(cls, setup: TrainSetup, data: Any, teacher: run_lib.Run, shardings: Any,
            workdir: str, log: Log) -> OfflineTopKData:
    _single_process('train.distill.offline_top_k')
    cfg = setup.config
    if cfg.data.mixture or not hasattr(data, 'rows'):
      raise DataError('train.distill.offline_top_k reads the packed rows of one data source; '
                      'with data.mixture use the online teacher (train.distill.offline_top_k=0)')
    k = cfg.train.distill.offline_top_k
    rows = data.rows('train')
    n, t = len(rows), cfg.data.seq_len
    directory = workdir_lib.path(workdir) / TOPK_DIR
    ids_path, logits_path = directory / f'ids_k{k}.npy', directory / f'logits_k{k}.npy'
    if ids_path.exists() and logits_path.exists():
      ids, logits = np.load(str(ids_path)), np.load(str(logits_path))
      if ids.shape == (n, t, k):
        log(f'distill: the teacher top-{k} logits of {n} rows from {directory}')
        return cls(data, rows, ids, logits)
    fn = distill.make_topk_fn(teacher.model_def, k, mesh=setup.mesh, rules=setup.rules,
                              param_shardings=shardings,
                              batch_sharding=setup.eval_batch_sharding)
    ids = np.zeros((n, t, k), np.int32)
    logits = np.zeros((n, t, k), np.float32)
    for start, count, batch in _padded_batches(rows, cfg.train.batch_size,
                                               packing.rows_to_batch):
      i, v = fn(teacher.params, jax.device_put(batch, setup.eval_batch_sharding))
      ids[start:start + count], logits[start:start + count] = (np.asarray(i)[:count],
                                                               np.asarray(v)[:count])
    directory.mkdir(parents=True, exist_ok=True)
    with ids_path.open('wb') as f:
      np.save(f, ids)
    with logits_path.open('wb') as f:
      np.save(f, logits)
    log(f'distill: stored the teacher top-{k} logits of {n} rows ({t} tokens each) in '
        f'{directory} ({(ids.nbytes + logits.nbytes) / 2**20:.1f} MiB)')
    return cls(data, rows, ids, logits)

  def _batch(self, index_B: np.ndarray) -> dict[str, np.ndarray]:
    batch = packing.rows_to_batch(self._rows[index_B])
    batch['teacher_ids'], batch['teacher_logits'] = self._ids[index_B], self._logits[index_B]
    return batch

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                     process_count: int = 1) -> loader.IndexBatchIterator:
    return loader.IndexBatchIterator(len(self._rows), self._batch, batch_size=batch_size,
                                     seed=seed, process_index=process_index,
                                     process_count=process_count)

  def eval_batches(self, *args, **kwargs):
    return self.data.eval_batches(*args, **kwargs)

  def val_text_sample(self, num_chars: int) -> str:
    return self.data.val_text_sample(num_chars)

