"""lm.eval.metrics against hand-computed values: a 3-class confusion matrix with known
precision/recall/F1, BLEU by its definition, ROUGE on hand-counted n-grams."""

import math

import numpy as np
import pytest

from lm.eval import metrics


def test_three_class_confusion_matrix_precision_recall_f1():
  gold = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
  pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]
  got = metrics.classification_metrics(gold, pred, 3, ['a', 'b', 'c'])
  # rows gold, columns predicted, counted by hand
  assert got['confusion_matrix'] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
  precision = [3 / 4, 1 / 2, 3 / 4]  # column sums 4, 2, 4
  recall = [3 / 4, 1 / 2, 3 / 4]  # row sums 4, 2, 4
  f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
  assert got['accuracy'] == pytest.approx(7 / 10)
  for k, name in enumerate('abc'):
    assert got['per_class'][name]['precision'] == pytest.approx(precision[k])
    assert got['per_class'][name]['recall'] == pytest.approx(recall[k])
    assert got['per_class'][name]['f1'] == pytest.approx(f1[k])
  assert [got['per_class'][n]['support'] for n in 'abc'] == [4, 2, 4]
  assert got['macro_precision'] == pytest.approx(np.mean(precision))
  assert got['macro_recall'] == pytest.approx(np.mean(recall))
  assert got['macro_f1'] == pytest.approx(np.mean(f1))


def test_unbalanced_classes_and_a_class_never_predicted():
  gold = [0, 0, 1, 1, 1, 2]
  pred = [0, 1, 1, 1, 0, 0]  # class 2 is never predicted
  got = metrics.classification_metrics(gold, pred, 3)
  assert got['confusion_matrix'] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
  p = [1 / 3, 2 / 3, 0.0]
  r = [1 / 2, 2 / 3, 0.0]
  f = [2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(p, r, strict=True)]
  assert got['macro_precision'] == pytest.approx(sum(p) / 3)
  assert got['macro_recall'] == pytest.approx(sum(r) / 3)
  assert got['macro_f1'] == pytest.approx(sum(f) / 3)
  assert got['accuracy'] == pytest.approx(3 / 6)


def test_classification_inputs_are_checked():
  with pytest.raises(ValueError, match='prediction 3 is outside the 3 classes'):
    metrics.confusion_matrix([0, 1], [0, 3], 3)
  with pytest.raises(ValueError, match='same length'):
    metrics.confusion_matrix([0, 1], [0], 3)
  with pytest.raises(ValueError, match='2 class names for 3 classes'):
    metrics.classification_metrics([0], [0], 3, ['a', 'b'])


def test_bleu_of_identical_text_is_100_and_of_a_known_pair_follows_the_definition():
  assert metrics.bleu(['the cat sat on the mat', 'a b c d e'],
                      ['the cat sat on the mat', 'a b c d e']) == pytest.approx(100.0)
  # 'the cat sat on the mat' vs 'the cat is on the mat': n-gram precisions 5/6, 3/5, 1/4 and
  # 0/3, whose zero sacrebleu's default 'exp' smoothing makes 1 / (2 * 3); equal lengths,
  # so no brevity penalty.
  precisions = [5 / 6, 3 / 5, 1 / 4, 1 / 6]
  want = 100 * math.exp(sum(math.log(p) for p in precisions) / 4)
  got = metrics.bleu(['the cat sat on the mat'], ['the cat is on the mat'])
  assert got == pytest.approx(want, rel=1e-6)
  # A short hypothesis pays the brevity penalty exp(1 - ref_len / hyp_len).
  short = metrics.bleu(['the cat sat on'], ['the cat sat on the mat'])
  assert short == pytest.approx(100 * math.exp(1 - 6 / 4), rel=1e-6)


def test_rouge_on_a_hand_case():
  # 'the cat sat' vs 'the cat ran on': 2 shared unigrams (P 2/3, R 2/4), 1 shared bigram
  # (P 1/2, R 1/3), longest common subsequence 'the cat' (2 tokens).
  f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
  got = metrics.rouge(['the cat sat', 'Same Text here'], ['the cat ran on', 'same text here'])
  assert got['rouge1'] == pytest.approx(100 * (f(2 / 3, 1 / 2) + 1) / 2)
  assert got['rouge2'] == pytest.approx(100 * (f(1 / 2, 1 / 3) + 1) / 2)
  assert got['rougeL'] == pytest.approx(100 * (f(2 / 3, 1 / 2) + 1) / 2)
  with pytest.raises(ValueError, match='2 hypotheses for 1 references'):
    metrics.rouge(['a', 'b'], ['a'])
