"""Evaluation metrics: classification (pure numpy) and BLEU / ROUGE wrappers.

Classification takes integer labels 0..K-1. The confusion matrix is [gold, predicted]:
row g counts the examples whose gold label is g, column p those predicted as p. A class
that is never predicted has precision 0 and one that never occurs has recall 0 (and F1 0
either way), so the macro averages are over every class, present or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int],
                     num_classes: int) -> np.ndarray:
  """[K, K] int64 counts: entry [g, p] = examples with gold label g predicted as p."""
  gold_N, pred_N = _labels(gold, predicted, num_classes)
  counts_KK = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts_KK, (gold_N, pred_N), 1)
  return counts_KK


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> float:
  """Fraction of examples whose prediction equals the gold label."""
  gold_N, pred_N = np.asarray(gold), np.asarray(predicted)
  if gold_N.shape != pred_N.shape or gold_N.size == 0:
    raise ValueError(f'accuracy needs as many predictions as gold labels, at least one; got '
                     f'{pred_N.size} predictions for {gold_N.size} labels')
  return float(np.mean(gold_N == pred_N))


def precision_recall_f1(counts_KK: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class precision, recall, F1 and support ([K] each) of a confusion matrix."""
  counts_KK = np.asarray(counts_KK, np.float64)
  true_pos_K = np.diag(counts_KK)
  predicted_K = counts_KK.sum(axis=0)
  support_K = counts_KK.sum(axis=1)
  precision_K = np.divide(true_pos_K, predicted_K, out=np.zeros_like(true_pos_K),
                          where=predicted_K > 0)
  recall_K = np.divide(true_pos_K, support_K, out=np.zeros_like(true_pos_K),
                       where=support_K > 0)
  denom_K = precision_K + recall_K
  f1_K = np.divide(2 * precision_K * recall_K, denom_K, out=np.zeros_like(true_pos_K),
                   where=denom_K > 0)
  return {'precision': precision_K, 'recall': recall_K, 'f1': f1_K,
          'support': support_K.astype(np.int64)}


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], num_classes: int,
                           class_names: Sequence[str] | None = None) -> dict:
  """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix."""
  counts_KK = confusion_matrix(gold, predicted, num_classes)
  per = precision_recall_f1(counts_KK)
  names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f'{len(names)} class names for {num_classes} classes')
  return {
      'accuracy': accuracy(gold, predicted),
      'macro_precision': float(per['precision'].mean()),
      'macro_recall': float(per['recall'].mean()),
      'macro_f1': float(per['f1'].mean()),
      'per_class': {name: {'precision': float(per['precision'][k]),
                           'recall': float(per['recall'][k]), 'f1': float(per['f1'][k]),
                           'support': int(per['support'][k])}
                    for k, name in enumerate(names)},
      'confusion_matrix': counts_KK.tolist(),
      'labels': names,
  }


def _labels(gold: Sequence[int], predicted: Sequence[int],
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  gold_N = np.asarray(gold, np.int64)
  pred_N = np.asarray(predicted, np.int64)
  if gold_N.ndim != 1 or gold_N.shape != pred_N.shape:
    raise ValueError(f'gold labels {gold_N.shape} and predictions {pred_N.shape} must be two '
                     'lists of the same length')
  for what, x in (('gold label', gold_N), ('prediction', pred_N)):
    bad = x[(x < 0) | (x >= num_classes)]
    if bad.size:
      raise ValueError(f'{what} {int(bad[0])} is outside the {num_classes} classes '
                       f'0..{num_classes - 1}')
  return gold_N, pred_N


# ---- text overlap ------------------------------------------------------------------------


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU (sacrebleu, its default 13a tokenization), 0..100, one reference each."""
  import sacrebleu
  _same_length(hypotheses, references)
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


def rouge(hypotheses: Sequence[str], references: Sequence[str],
          use_stemmer: bool = False) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures (rouge-score), scaled to 0..100 like BLEU.

  rouge-score's tokenizer lowercases and keeps only [a-z0-9] runs, so text in other
  scripts scores 0.
  """
  from rouge_score import rouge_scorer
  _same_length(hypotheses, references)
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for hyp, ref in zip(hypotheses, references, strict=True):
    scores = scorer.score(ref, hyp)  # (target, prediction)
    for name in ROUGE_TYPES:
      totals[name] += scores[name].fmeasure
  return {name: 100.0 * total / len(hypotheses) for name, total in totals.items()}


def _same_length(hypotheses: Sequence[str], references: Sequence[str]) -> None:
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references; give '
                     'one hypothesis per reference, at least one')
