"""Classification evaluation: predicted labels from a hook, scored against gold labels.

A predictor is any `predict_labels(run, texts) -> list[int]` (class indices into the
label names). `ZeroShotLabels` is one for a decoder-only LM: it picks the label whose
verbalizer text has the highest log-likelihood after the text; `HeadLabels` is the one
for a run trained with a classification head (train.task='classify').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lm.data import supervised
from lm.errors import DataError
from lm.eval import metrics
from lm.eval.records import EvalInputError, fill, text_field
from lm.eval.scoring import Scorer

PredictLabels = Callable[[Any, list[str]], list[int]]


class ZeroShotLabels:
  """predict_labels for a decoder-only LM: argmax over labels of
  log p(label_prefix + label | text), the label's summed token log-probs."""

  def __init__(self, labels: Sequence[str], *, label_prefix: str = ' ', batch_size: int = 8,
               scorer: Scorer | None = None):
    if len(labels) < 2:
      raise EvalInputError(f'--labels needs at least two labels, got {list(labels)}')
    self.labels, self.label_prefix, self.batch_size = list(labels), label_prefix, batch_size
    self._scorer = scorer  # built for the run on first use unless given (compiled once)

  def scores(self, run, texts: Sequence[str]) -> np.ndarray:
    """[N, K] log-likelihood of each label's verbalizer after each text."""
    if self._scorer is None or self._scorer.run is not run:
      self._scorer = Scorer(run, self.batch_size)
    pairs = [(text, self.label_prefix + label) for text in texts for label in self.labels]
    logp = [lp for lp, _ in self._scorer.text_loglikelihood(pairs)]
    return np.asarray(logp, np.float64).reshape(len(texts), len(self.labels))

  def __call__(self, run, texts: list[str]) -> list[int]:
    return [int(k) for k in np.argmax(self.scores(run, texts), axis=1)]


class HeadLabels:
  """predict_labels for a run with a classification head (model.num_classes > 0, trained
  with train.task='classify'): argmax of the head's logits over [bos] text [eos] rows, cut
  to data.seq_len exactly as training encodes them."""

  def __init__(self, labels: Sequence[str], batch_size: int = 8):
    self.labels, self.batch_size = list(labels), batch_size
    self._classify = None

  def __call__(self, run, texts: list[str]) -> list[int]:
    """Indices into `labels` (the head's classes are the run's label names, which training
    numbered in sorted order; they are matched by name)."""
    head_names = head_label_names(run, self.labels)
    missing = [n for n in head_names if n not in self.labels]
    if missing:
      raise EvalInputError(f'--labels={",".join(self.labels)} lacks the run\'s label(s) '
                           f'{missing}; its head was trained on {head_names}.')
    if self._classify is None:
      self._classify = jax.jit(lambda params, b: run.model_def.merge(params).classify(
          b['inputs'], b['positions'], b['segment_ids'], b['lengths']))
    rows_NT, _ = supervised.classify_rows(run.tokenizer, texts, run.config.data.seq_len)
    predicted = []
    for i in range(0, len(rows_NT), self.batch_size):
      chunk = rows_NT[i:i + self.batch_size]
      padded = np.zeros((self.batch_size, chunk.shape[1]), np.int32)  # one compiled shape
      padded[:len(chunk)] = chunk
      batch = supervised.classify_batch(padded, np.zeros(self.batch_size, np.int32))
      del batch['labels']
      logits_BC = np.asarray(self._classify(run.params, batch))
      predicted += [int(k) for k in np.argmax(logits_BC[:len(chunk)], axis=1)]
    return [self.labels.index(head_names[k]) for k in predicted]


def _label_key(name: str) -> tuple:
  """Training's order of labels (lm.data.supervised: JSON numbers first, then strings)."""
  try:
    return (False, int(name), '')
  except ValueError:
    return (True, 0, name)


def head_label_names(run, labels: Sequence[str]) -> list[str]:
  """The label name of each of the head's classes: from the run's training records (as
  training numbers them, sorted), or, when those are gone, `labels` sorted the same way
  (training numbers whatever labels it saw in that order), if as many as the classes."""
  num_classes = run.model_def.cfg.num_classes
  try:
    records = supervised.read_records(run.config.data, lambda _: None)
    names = [str(x) for x in sorted({r['label'] for r in records},
                                    key=lambda x: (isinstance(x, str), x))]
  except (DataError, OSError):
    names = sorted(labels, key=_label_key)
    if len(names) != num_classes:
      raise EvalInputError(f'--labels={",".join(labels)} names {len(names)} labels but the '
                           f"run's head has {num_classes} classes (its training records, "
                           'which name them, are gone): give all of its labels') from None
  if len(names) != num_classes:
    raise EvalInputError(f"the run's training records name {len(names)} labels {names} but "
                         f'its head has {num_classes} classes')
  return names


def gold_label(value: Any, labels: Sequence[str], where: str, field: str) -> int:
  """A record's gold label as a class index: an index 0..K-1 or one of the label names."""
  if isinstance(value, bool):
    raise EvalInputError(f'{where}: field {field!r} is a bool; give a label name or index')
  if isinstance(value, int):
    if 0 <= value < len(labels):
      return value
    raise EvalInputError(f'{where}: label index {value} is outside 0..{len(labels) - 1} '
                         f'(--labels={",".join(labels)})')
  if isinstance(value, str) and value in labels:
    return labels.index(value)
  raise EvalInputError(f'{where}: label {value!r} in field {field!r} is not one of --labels='
                       f'{",".join(labels)} nor an index into them')


def classification_task(run, records: Sequence[tuple[str, dict[str, Any]]], *,
                        labels: Sequence[str], text_field_name: str = 'text',
                        label_field: str = 'label', template: str = '',
                        predict_labels: PredictLabels | None = None,
                        batch_size: int = 8) -> dict[str, Any]:
  """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix of
  `predict_labels` (default: zero-shot verbalizer scoring) on the records."""
  labels = list(labels)
  if len(labels) < 2:
    raise EvalInputError(f'--labels needs at least two labels, got {labels}')
  if len(set(labels)) != len(labels):
    raise EvalInputError(f'--labels={",".join(labels)} repeats a label')
  texts, gold = [], []
  for where, record in records:
    text = text_field(record, text_field_name, where)
    texts.append(fill(template, record, where) if template else text)
    gold.append(gold_label(record[label_field], labels, where, label_field))
  predict = predict_labels or ZeroShotLabels(labels, batch_size=batch_size)
  predicted = [int(p) for p in predict(run, texts)]
  if len(predicted) != len(texts):
    raise ValueError(f'predict_labels returned {len(predicted)} labels for {len(texts)} texts')
  result = metrics.classification_metrics(gold, predicted, len(labels), labels)
  samples = [{'text': t, 'gold': labels[g], 'predicted': labels[p]}
             for t, g, p in zip(texts, gold, predicted, strict=True)]
  return {**result, 'examples': len(records), 'samples': samples}
