"""Knowledge distillation (train.task='distill'): the KL term, alpha = 0, the tokenizer
check and the offline top-k mode.

One tiny teacher (2 layers, width 64) is trained once on a sentence corpus; students are
1 layer, width 32, on the same corpus.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetune_data import write_corpus
from jax.experimental.compilation_cache import compilation_cache

from configs.default import get_config
from lm.data import DataError
from lm.train import Trainer, distill

SEQ_LEN = 32


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  """A persistent XLA cache for this module: Trainers of one model compile their steps once."""
  options = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
             'jax_persistent_cache_min_entry_size_bytes')
  saved = {name: getattr(jax.config, name) for name in options}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _tiny(c, root, *, layers=1, width=32):
  c.data.cache_dir = str(root / 'cache')
  c.data.source, c.data.path = 'text', str(root / 'corpus')
  c.data.val_fraction = 0.2
  c.data.seq_len = SEQ_LEN
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = layers, width, 2 * width
  c.model.num_heads = c.model.num_kv_heads = 2
  c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.min_lr = 1e-2, 2, 1e-3
  c.train.batch_size = 8
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.eval_batches = 2
  c.train.sample_tokens = 0
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


def _student(teacher, **train):
  root, workdir, _ = teacher
  c = _tiny(get_config(), root)
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
  plain = Trainer(_tiny(get_config(), root), str(tmp_path / 'plain'), log=lambda _: None).run()
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
  online = Trainer(_student(teacher, alpha=0.7), str(tmp_path / 'on'), log=lambda _: None).run()
  vocab = 259  # the byte tokenizer's ids: top-k over all of them is the whole distribution
  offline = Trainer(_student(teacher, alpha=0.7, offline_top_k=vocab), str(tmp_path / 'off'),
                    log=lambda _: None).run()
  assert offline['train/loss'] == pytest.approx(online['train/loss'], rel=1e-4)
  assert offline['eval/loss'] == pytest.approx(online['eval/loss'], rel=1e-4)
  assert (tmp_path / 'off' / 'distill_topk' / f'ids_k{vocab}.npy').is_file()
  assert math.isfinite(offline['train/kl'])
