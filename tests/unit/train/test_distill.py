"""Knowledge distillation (train.task='distill'): the KL term, alpha = 0, the tokenizer
check, the offline top-k mode, and prune-then-distill beating the same student from scratch.

One tiny teacher (2 layers, width 64, head size 32) is trained once on a sentence corpus;
every student has the shape the teacher prunes to (1 layer, width 32, MLP 64, 2 heads of
size 32), so the students' steps compile once for the module.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from finetune_data import write_corpus
from train_fixtures import module_xla_cache, tiny  # noqa: F401  (an autouse fixture)

from configs.default import get_config
from lm.data import DataError
from lm.tools import prune
from lm.train import Trainer, distill

SEQ_LEN = 32
ALPHA = 0.9  # the KL's weight in the distillation runs
STUDENT = {'num_layers': 1, 'width': 32, 'mlp_dim': 64, 'head_dim': 32}


def _tiny(c, root, *, layers=1, width=32):
  c = tiny(c, root / 'cache', seq_len=SEQ_LEN, layers=layers, width=width)
  c.data.source, c.data.path = 'text', str(root / 'corpus')
  c.train.steps = c.train.eval_every = c.checkpoint.every = 10
  return c


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """(root, teacher workdir, its final metrics): 40 steps of a 2-layer width-64 model."""
  root = tmp_path_factory.mktemp('distill')
  write_corpus(root / 'corpus')
  c = _tiny(get_config(), root, layers=2, width=64)
  c.train.steps = c.train.eval_every = c.checkpoint.every = 40
  final = Trainer(c, str(root / 'teacher'), log=lambda _: None).run()
  return root, root / 'teacher', final


def _plain(root):
  """The student trained without a teacher, from random init."""
  c = _tiny(get_config(), root)
  c.model.update(STUDENT)
  return c


def _student(teacher, **train):
  root, workdir, _ = teacher
  c = _plain(root)
  c.train.task = 'distill'
  c.train.distill.teacher = str(workdir)
  for key, value in train.items():
    c.train.distill[key] = value
  return c


def test_kl_term_matches_a_hand_computation():
  student = jnp.asarray([[[1.0, 0.0, -1.0]]])
  teacher = jnp.asarray([[[0.0, 2.0, 0.5]]])
  t = 2.0
  p = np.exp(np.asarray(teacher[0, 0]) / t)
  p /= p.sum()
  q = np.exp(np.asarray(student[0, 0]) / t)
  q /= q.sum()
  want = t * t * float(np.sum(p * np.log(p / q)))
  assert float(distill.kl_BT(student, teacher, t)[0, 0]) == pytest.approx(want, rel=1e-6)
  # top-k over the whole vocabulary is the full KL; over 2 ids, p renormalised on them
  ids = jnp.asarray([[[1, 2, 0]]])
  assert float(distill.topk_kl_BT(student, ids, teacher[..., jnp.asarray([1, 2, 0])], t)[0, 0]
               ) == pytest.approx(want, rel=1e-6)
  p2 = p[[1, 2]] / p[[1, 2]].sum()
  want2 = t * t * float(np.sum(p2 * (np.log(p2) - np.log(q[[1, 2]]))))
  got2 = distill.topk_kl_BT(student, ids[..., :2], teacher[..., jnp.asarray([1, 2])], t)
  assert float(got2[0, 0]) == pytest.approx(want2, rel=1e-6)


def test_alpha_zero_is_plain_training(teacher, tmp_path):
  root, _, _ = teacher
  plain = Trainer(_plain(root), str(tmp_path / 'plain'), log=lambda _: None).run()
  zero = Trainer(_student(teacher, alpha=0.0), str(tmp_path / 'zero'), log=lambda _: None).run()
  assert zero['train/loss'] == pytest.approx(plain['train/loss'], abs=1e-5)
  assert zero['eval/loss'] == pytest.approx(plain['eval/loss'], abs=1e-5)
  assert zero['train/kl'] > 0  # the teacher ran, with no weight


def test_a_teacher_with_another_tokenizer_is_refused(teacher, tmp_path):
  c = _student(teacher)
  c.data.tokenizer.kind = 'char'
  with pytest.raises(DataError, match=r'train\.distill\.teacher'):
    Trainer(c, str(tmp_path / 'bad'), log=lambda _: None).run()


def test_offline_top_k_over_the_whole_vocabulary_trains_as_online(teacher, tmp_path):
  online = Trainer(_student(teacher, alpha=ALPHA), str(tmp_path / 'on'),
                   log=lambda _: None).run()
  vocab = 259  # the byte tokenizer's ids: top-k over all of them is the whole distribution
  offline = Trainer(_student(teacher, alpha=ALPHA, offline_top_k=vocab), str(tmp_path / 'off'),
                    log=lambda _: None).run()
  assert offline['train/loss'] == pytest.approx(online['train/loss'], rel=1e-4)
  assert offline['eval/loss'] == pytest.approx(online['eval/loss'], rel=1e-4)
  assert (tmp_path / 'off' / 'distill_topk' / f'ids_k{vocab}.npy').is_file()
  assert math.isfinite(offline['train/kl'])


def test_the_pruned_teacher_distilled_beats_the_same_student_from_scratch(teacher, tmp_path):
  """The recipe of docs/compression.md: prune the teacher to the student's shape, start from
  it (init_from) and distill. At equal steps on the same rows it ends far below the same
  student trained from random init (about 1.2 nats at 10 steps)."""
  root, workdir, _ = teacher
  targets = prune.Targets(**{k: STUDENT[k] for k in ('num_layers', 'width', 'mlp_dim')})
  summary = prune.prune_workdir(workdir, tmp_path / 'pruned', targets, calibration_rows=16,
                                batch_size=8, log=lambda _: None)
  assert summary['pruned']['num_layers'] == 1 and summary['pruned']['width'] == 32
  c = _student(teacher, alpha=ALPHA)
  c.init_from = str(tmp_path / 'pruned')
  distilled = Trainer(c, str(tmp_path / 'distilled'), log=lambda _: None).run()
  scratch = Trainer(_plain(root), str(tmp_path / 'scratch'), log=lambda _: None).run()
  assert distilled['eval/loss'] < scratch['eval/loss'] - 0.5, (distilled, scratch)
