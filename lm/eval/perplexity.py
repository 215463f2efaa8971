"""Perplexity and bits per byte of a trained run on a text source.

The text goes through the run's own pipeline: its data config's source (or another
source given as overrides), its document split, the run's tokenizer, the same packing
into rows of data.seq_len + 1 tokens, and lm/train/step.py's eval step. So on the run's
validation split with train.eval_batches batches the loss is the one training logged,
and on all rows it is the loss of the whole split.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import parallel
from lm.data import packing, sources, split
from lm.data.errors import DataError
from lm.train.step import byte_lengths, make_eval_step, summarize_eval

SPLITS = ('train', 'validation', 'all')
_EVAL_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # run -> its eval step


def source_config(run, overrides: Mapping[str, Any]):
  """The run's data config with `overrides` ({'source': 'text', 'path': ...}) applied."""
  data_cfg = copy.deepcopy(run.config.data)
  for key, value in overrides.items():
    if key not in data_cfg:
      raise DataError(f'data.{key}: no such data config key (configs/default.py lists them)')
    data_cfg[key] = value
  return data_cfg


def document_rows(run, texts: list[str]) -> np.ndarray:
  """[N, 2, seq_len + 1] rows of `texts` tokenized and packed as lm.data.prepare would."""
  tok, seq_len = run.tokenizer, run.config.data.seq_len
  ids = tok.encode_batch(texts)
  order = packing.document_order(len(ids))
  tokens_NL, segments_NL = packing.pack([ids[i] for i in order], seq_len, tok.bos_id,
                                        tok.eos_id)
  return np.stack([tokens_NL, segments_NL], axis=1)


def source_texts(run, overrides: Mapping[str, Any], split_name: str) -> list[str]:
  """The documents of the source the overrides describe: one split of it, or all."""
  if split_name not in SPLITS:
    raise DataError(f'--split={split_name!r}: expected one of {", ".join(SPLITS)}')
  data_cfg = source_config(run, overrides)
  docs = sources.read(data_cfg).documents
  if split_name != 'all':
    docs = split.split_documents(docs, data_cfg.split, data_cfg.val_fraction)[split_name]
  return [d.text for d in docs]


def evaluate_rows(run, rows_N2L: np.ndarray, batch_size: int | None = None) -> dict[str, float]:
  """Loss (nats/token), perplexity and bits/byte of packed rows, every row once.

  Rows are taken in batches of train.batch_size; the last batch is filled with empty
  rows, which carry no weight.
  """
  cfg = run.config
  batch_size = batch_size or cfg.train.batch_size
  if len(rows_N2L) == 0:
    raise DataError('no rows to evaluate: the text is empty')
  nproc, pid = jax.process_count(), jax.process_index()
  if batch_size % nproc:
    raise DataError(f'batch size {batch_size} does not divide over {nproc} processes')
  local = batch_size // nproc
  num_batches = -(-len(rows_N2L) // batch_size)
  padded_N2L = np.zeros((num_batches * batch_size, *rows_N2L.shape[1:]), np.int32)
  padded_N2L[:len(rows_N2L)] = rows_N2L
  batches = [packing.rows_to_batch(padded_N2L[b * batch_size + pid * local:
                                              b * batch_size + (pid + 1) * local])
             for b in range(num_batches)]
  return _summarize(run, batches, num_rows=len(rows_N2L))


def perplexity(run, *, overrides: Mapping[str, Any] | None = None, split_name: str = '',
               eval_batches: int = 0) -> dict[str, Any]:
  """Perplexity of `run` on its own data (no overrides) or on another source.

  split_name: 'validation' (default for the run's own data), 'train' or 'all' (default
  for another source). eval_batches > 0 (the run's own data only) takes the very batches
  training evaluates on (lm.data's evenly spread validation rows); 0 takes every row.
  """
  overrides = dict(overrides or {})
  if overrides:
    split_name = split_name or 'all'
    texts = source_texts(run, overrides, split_name)
    rows_N2L = document_rows(run, texts)
    where = {'source': _describe(source_config(run, overrides)), 'documents': len(texts)}
  else:
    split_name = split_name or 'validation'
    if split_name == 'all':
      rows_N2L = np.concatenate([run.data.rows(s) for s in split.SPLITS])
    elif split_name in split.SPLITS:
      rows_N2L = run.data.rows(split_name)
    else:
      raise DataError(f'--split={split_name!r}: expected one of {", ".join(SPLITS)}')
    where = {'source': _describe(run.config.data)}
  if eval_batches:
    if overrides or split_name != 'validation':
      raise DataError('--eval_batches applies to the run\'s own validation split only; '
                      'leave it 0 to evaluate every row')
    batch_size = run.config.train.batch_size
    local = run.data.eval_batches(batch_size // jax.process_count(), eval_batches,
                                  jax.process_index(), jax.process_count())
    metrics = _summarize(run, local, num_rows=len(local) * batch_size)
  else:
    metrics = evaluate_rows(run, rows_N2L)
  return {**metrics, 'split': split_name, **where}


def _summarize(run, local_batches: list[dict[str, np.ndarray]], num_rows: int) -> dict[str, Any]:
  sharding = parallel.batch_sharding(run.mesh)
  step = _EVAL_STEPS.get(run)
  if step is None:  # one compiled step per run, however many sources it evaluates
    step = _EVAL_STEPS[run] = make_eval_step(
        run.model_def, mesh=run.mesh, rules=run.config.mesh.rules,
        param_shardings=jax.tree.map(lambda x: x.sharding, run.params), batch_sharding=sharding,
        byte_lengths_V=jnp.asarray(byte_lengths(run.tokenizer, run.model_def.cfg.vocab_size)))
  sums = [step(run.params, parallel.global_batch(b, sharding)) for b in local_batches]
  summary = summarize_eval(sums)
  return {'loss': summary['eval/loss'], 'perplexity': summary['eval/perplexity'],
          'bits_per_byte': summary['eval/bits_per_byte'],
          'tokens': int(sum(float(s['tokens']) for s in sums)),
          'bytes': int(sum(float(s['bytes']) for s in sums)), 'rows': num_rows}


def _describe(data_cfg) -> str:
  if data_cfg.source == 'text':
    return f'text:{data_cfg.path}'
  if data_cfg.source == 'tfds':
    return f'tfds:{data_cfg.tfds_name}[{data_cfg.tfds_split}]'
  return data_cfg.source
