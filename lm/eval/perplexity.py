"""Perplexity and bits per byte of a trained run on its own data or another text source.

Evaluation prepares the text itself, from the run's `config.data` (or that config with
overrides such as {'source': 'text', 'path': F}) and the run's saved tokenizer: the same
document split and packing into rows of data.seq_len + 1 tokens as training, never a new
tokenizer. So on the run's validation split with train.eval_batches batches the loss is
the one training logged, and on every row it is the loss of the whole split.

Per kind of run: plain text scores every next token; a data.mixture run is scored on every
domain (each its own rows, tokens routed by their domain) and overall; an sft run scores
the response tokens only, as training does; a classification or masked-LM run is refused
(`check_task`), since next-token perplexity says nothing about either.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import parallel
from lm.data import mixture, packing, sources, split, supervised
from lm.errors import DataError, InputError
from lm.eval.scoring import eval_mesh
from lm.model import losses

SPLITS = ('train', 'validation', 'all')
_STEPS: dict[int, tuple] = {}  # id(run) -> (weakref to it, its compiled step, batch sharding)


@dataclasses.dataclass
class Part:
  """Rows to score as one group: [N, 2, L] text rows (tokens, segments) or [N, 3, L] sft rows
  (+ trained flags); `domain` is the mixture domain id the model routes them by."""

  name: str
  rows: np.ndarray
  domain: int | None = None
  documents: int = 0


def check_task(run) -> None:
  """InputError unless next-token perplexity means something for this run."""
  cfg, where = run.config, getattr(run, 'workdir', 'this run')
  if cfg.train.task == 'classify' or cfg.data.get('format') == 'classify':
    raise InputError(f"--task=perplexity: {where} is a classification run (train.task="
                     f"'classify'): its head predicts labels, not text; score it with "
                     '--task=classification --jsonl=FILE --labels=NAME,NAME')
  if cfg.train.task == 'mlm' or not cfg.model.causal:
    raise InputError(f"--task=perplexity: {where} is a masked-LM encoder (model.causal=False, "
                     f"train.task={cfg.train.task!r}): it gives no next-token probabilities, "
                     'so it has no perplexity (its masked-token loss is eval/loss in '
                     'metrics.jsonl); fine-tune it with train.task=classify and use '
                     '--task=classification')


def source_config(run, overrides: Mapping[str, Any]):
  """The run's data config with `overrides` ({'source': 'text', 'path': ...}) applied; an
  override of the source also drops the run's data.mixture (the new source is one text)."""
  data_cfg = copy.deepcopy(run.config.data)
  for key, value in overrides.items():
    if key not in data_cfg:
      raise DataError(f'data.{key}: no such data config key (configs/default.py lists them)')
    data_cfg[key] = value
  if overrides and data_cfg.get('mixture'):
    data_cfg.mixture = ()
  return data_cfg


def document_rows(tokenizer, texts: Sequence[str], seq_len: int) -> np.ndarray:
  """[N, 2, seq_len + 1] rows of `texts` tokenized and packed as lm.data.prepare packs."""
  ids = tokenizer.encode_batch(list(texts))
  order = packing.document_order(len(ids))
  tokens_NL, segments_NL = packing.pack([ids[i] for i in order], seq_len, tokenizer.bos_id,
                                        tokenizer.eos_id)
  return np.stack([tokens_NL, segments_NL], axis=1)


def _split_docs(docs, data_cfg, split_name: str, *, one_doc_tail: bool = False):
  if split_name == 'all':
    return docs
  method = 'tail' if one_doc_tail and len(docs) < 2 else data_cfg.split  # as lm.data.mixture
  return split.split_documents(docs, method, data_cfg.val_fraction)[split_name]


def text_parts(run, data_cfg, split_name: str) -> list[Part]:
  """The rows of a text source or of every domain of a mixture, one split or all."""
  tok, seq_len = run.tokenizer, run.config.data.seq_len
  if data_cfg.get('mixture'):
    parts = []
    for d, (name, src, _) in enumerate(tuple(e) for e in data_cfg.mixture):
      docs = _split_docs(mixture.read_domain(data_cfg, src), data_cfg, split_name,
                         one_doc_tail=True)
      parts.append(Part(name, document_rows(tok, [x.text for x in docs], seq_len), d, len(docs)))
    return parts
  docs = _split_docs(sources.read(data_cfg).documents, data_cfg, split_name)
  return [Part('all', document_rows(tok, [x.text for x in docs], seq_len), None, len(docs))]


def sft_parts(run, data_cfg, split_name: str) -> list[Part]:
  """The sft records' rows (response tokens trained): the run's validation split exactly as
  training lays it out, or every record ('all')."""
  quiet = lambda _: None  # noqa: E731
  if split_name == 'validation':
    data = supervised.prepare(data_cfg, tokenizer=run.tokenizer, log=quiet)
    rows = data._splits['validation']['rows']  # noqa: SLF001 - its eval rows, no copy
    return [Part('all', rows, None, int(data.stats['validation_records']))]
  if split_name == 'all':
    records = supervised.read_records(data_cfg, quiet)
    rows, _ = supervised.pack_sft([supervised.encode_sft(run.tokenizer, r) for r in records],
                                  data_cfg.seq_len)
    return [Part('all', rows, None, len(records))]
  raise InputError("--split=train: an sft run is scored on its validation records or on "
                   "all records (--split=validation or --split=all)")


def training_eval_rows(parts: list[Part], num_batches: int, batch_size: int) -> list[Part]:
  """The rows training's evaluation takes for `num_batches` batches: evenly spread over the
  split (lm.data.loader.eval_batches), or an equal share of every domain's rows (mixture)."""
  total = max(1, num_batches) * batch_size
  if len(parts) == 1:
    rows = parts[0].rows
    available = len(rows) // batch_size
    n = max(1, min(num_batches, available)) * batch_size
    picked = (np.arange(n) * len(rows)) // n if available else np.arange(n) % len(rows)
    return [dataclasses.replace(parts[0], rows=rows[picked])]
  out = []
  for d, part in enumerate(parts):
    n = total // len(parts) + (d < total % len(parts))
    rows = part.rows
    picked = (np.arange(n) * len(rows)) // max(n, 1) if len(rows) >= n else np.arange(n) % len(rows)
    out.append(dataclasses.replace(part, rows=rows[picked]))
  return out


def perplexity(run, *, overrides: Mapping[str, Any] | None = None, split_name: str = '',
               eval_batches: int = 0, batch_size: int = 0) -> dict[str, Any]:
  """Perplexity of `run` on its own data (no overrides) or on another source.

  split_name: 'validation' (default for the run's own data), 'train' or 'all' (default
  for another source). eval_batches > 0 (the run's own validation split only) takes the
  very rows training evaluates on; 0 takes every row. A mixture run's result holds every
  domain under 'domains' beside the overall numbers.
  """
  check_task(run)
  overrides = dict(overrides or {})
  if split_name and split_name not in SPLITS:
    raise InputError(f'--split={split_name!r}: expected one of {", ".join(SPLITS)}')
  split_name = split_name or ('all' if overrides else 'validation')
  data_cfg = source_config(run, overrides)
  moe = run.model_def.cfg.moe
  if overrides and moe is not None and moe.routing != 'learned':
    raise InputError(f'--task=perplexity: {run.workdir} routes tokens by their data.mixture '
                     f'domain (model.moe.routing={moe.routing!r}); another text source has no '
                     'domains: evaluate its own mixture (no --text_file / --data.* flags)')
  sft = run.config.data.get('format') == 'sft'
  parts = (sft_parts if sft else text_parts)(run, data_cfg, split_name)
  batch_size = batch_size or run.config.train.batch_size
  if eval_batches:
    if overrides or split_name != 'validation':
      raise InputError("--eval_batches applies to the run's own validation split only; "
                       'leave it 0 to evaluate every row')
    if sft:  # as SupervisedData.eval_batches: spread evenly, or every row (padded)
      rows, total = parts[0].rows, eval_batches * batch_size
      if len(rows) > total:
        parts = [dataclasses.replace(parts[0], rows=rows[(np.arange(total) * len(rows)) // total])]
    else:
      parts = training_eval_rows(parts, eval_batches, batch_size)
  for part in parts:
    if not len(part.rows):
      raise DataError(f'no rows to evaluate in {part.name!r}: the text of {_describe(data_cfg)} '
                      f'({split_name}) is empty')
  sums = [_part_sums(run, part, batch_size, routed=bool(data_cfg.get('mixture')))
          for part in parts]
  where = {'split': split_name, 'source': _describe(data_cfg),
           'documents': sum(p.documents for p in parts)}
  overall = {**losses.summarize([s for ps in sums for s in ps]),
             'rows': sum(len(p.rows) for p in parts), **where}
  if sft:
    overall['scored'] = 'response tokens'
  if len(parts) > 1 or parts[0].domain is not None:
    overall['domains'] = {p.name: {**losses.summarize(s), 'rows': len(p.rows),
                                   'documents': p.documents}
                          for p, s in zip(parts, sums, strict=True)}
  return overall


def _part_sums(run, part: Part, batch_size: int, *, routed: bool) -> list[dict]:
  """Per-batch sums of one part's rows, every row once (the last batch padded with empty
  rows, which weigh nothing)."""
  nproc, pid = jax.process_count(), jax.process_index()
  if batch_size % nproc:
    raise InputError(f'batch size {batch_size} does not divide over {nproc} processes')
  local = batch_size // nproc
  num_batches = -(-len(part.rows) // batch_size)
  padded = np.zeros((num_batches * batch_size, *part.rows.shape[1:]), np.int32)
  padded[:len(part.rows)] = part.rows
  step, sharding = _step(run)
  out = []
  for b in range(num_batches):
    rows = padded[b * batch_size + pid * local:b * batch_size + (pid + 1) * local]
    batch = supervised.sft_batch(rows) if rows.shape[1] == 3 else packing.rows_to_batch(rows)
    if routed:
      batch['domains'] = np.full(batch['inputs'].shape, part.domain or 0, np.int32)
    out.append(step(run.params, parallel.global_batch(batch, sharding)))
  return out


def _step(run):
  """(jit(params, batch) -> loss sums, the batch sharding), compiled once per run."""
  hit = _STEPS.get(id(run))
  if hit is None or hit[0]() is not run:
    mesh = eval_mesh(run)
    rules = parallel.rules_for(run.config.mesh)
    lengths_V = jnp.asarray(losses.byte_lengths(run.tokenizer, run.model_def.cfg.vocab_size))

    def sums(params, batch):
      with parallel.use_rules(mesh, rules):
        return losses.loss_sums(run.model_def, params, batch, lengths_V)

    sharding = parallel.batch_sharding(mesh)
    hit = _STEPS[id(run)] = (weakref.ref(run), jax.jit(
        sums, out_shardings=parallel.replicated(mesh)), sharding)
  return hit[1], hit[2]


def _describe(data_cfg) -> str:
  if data_cfg.get('mixture'):
    return 'mixture:' + ','.join(e[0] for e in data_cfg.mixture)
  if data_cfg.source == 'text':
    return f'text:{data_cfg.path}'
  if data_cfg.source == 'tfds':
    return f'tfds:{data_cfg.tfds_name}[{data_cfg.tfds_split}]'
  return data_cfg.source
