"""The BERT-style encoder: MLM masking statistics, bidirectional attention, and encoder
pretraining followed by classification fine-tuning, end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetune_data import write_classify, write_corpus

from configs.default import get_config
from lm.model import ModelConfig, ModelDef
from lm.train import Trainer
from lm.train.tasks import FIRST_REAL_TOKEN, mask_token_id, mlm_corrupt

VOCAB = 260  # a byte tokenizer's 259 ids + [MASK]


def test_mlm_masking_selects_15_percent_and_splits_80_10_10():
  rng = np.random.default_rng(0)
  tokens_BT = rng.integers(FIRST_REAL_TOKEN, VOCAB - 1, size=(256, 512)).astype(np.int32)
  tokens_BT[:, :2] = [1, 2]  # bos/eos are never selected
  segment_ids_BT = np.ones_like(tokens_BT)
  segment_ids_BT[:, -32:] = 0  # padding is never selected
  batch = {'inputs': jnp.asarray(tokens_BT), 'segment_ids': jnp.asarray(segment_ids_BT),
           'targets': jnp.zeros_like(tokens_BT), 'weights': jnp.ones(tokens_BT.shape)}
  out = jax.device_get(jax.jit(lambda k, b: mlm_corrupt(k, b, rate=0.15, vocab_size=VOCAB))(
      jax.random.key(0), batch))
  selected = out['weights'] > 0
  real = (segment_ids_BT > 0) & (tokens_BT >= FIRST_REAL_TOKEN)
  assert not np.any(selected & ~real)
  assert selected[real].mean() == pytest.approx(0.15, abs=0.005)
  np.testing.assert_array_equal(out['targets'], tokens_BT)  # the originals are predicted
  np.testing.assert_array_equal(out['inputs'][~selected], tokens_BT[~selected])  # loss only there
  inputs = out['inputs'][selected]
  masked = inputs == mask_token_id(VOCAB)
  kept = inputs == tokens_BT[selected]
  replaced = ~masked & ~kept
  n = selected.sum()
  assert masked.mean() == pytest.approx(0.8, abs=0.01)
  # A random replacement equals the original with probability 1/256: it counts as kept.
  assert replaced.mean() == pytest.approx(0.1 * (1 - 1 / 256), abs=0.01)
  assert kept.mean() == pytest.approx(0.1 + 0.1 / 256, abs=0.01)
  assert np.all((inputs[replaced] >= FIRST_REAL_TOKEN) & (inputs[replaced] < VOCAB - 1))
  assert n > 15_000  # a sample large enough for the tolerances above (~4 sigma)


def _forward(causal: bool):
  model_def = ModelDef.create(ModelConfig(vocab_size=VOCAB, num_layers=1, width=32, num_heads=2,
                                          num_kv_heads=2, mlp_dim=64, max_len=16, causal=causal))
  params = jax.jit(model_def.init_params)(jax.random.key(0))
  forward = jax.jit(lambda p, t, s: model_def.merge(p)(t, segment_ids_BT=s))
  return lambda t, s: forward(params, t, s)


def test_encoder_attention_is_bidirectional_within_a_segment_only():
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, 259, (1, 16)), jnp.int32)
  later = tokens.at[0, 5].set((tokens[0, 5] + 1) % 259)
  segments = jnp.asarray([[1] * 8 + [2] * 8])
  encoder, decoder = _forward(False), _forward(True)
  changed = np.abs(np.asarray(encoder(later, segments) - encoder(tokens, segments)))[0].sum(-1)
  assert changed[2] > 0  # an earlier position sees the later token
  assert np.all(changed[8:] == 0)  # the next packed document does not
  changed = np.abs(np.asarray(decoder(later, segments) - decoder(tokens, segments)))[0].sum(-1)
  assert np.all(changed[:5] == 0)  # the causal control


@pytest.mark.slow
def test_encoder_pretraining_then_classification_fine_tuning(tmp_path):
  c = get_config()
  c.data.source, c.data.path = 'text', str(write_corpus(tmp_path / 'corpus'))
  c.data.cache_dir, c.data.val_fraction, c.data.seq_len = str(tmp_path / 'cache'), 0.2, 32
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.model.causal = False
  c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.min_lr = 1e-2, 2, 1e-3
  c.train.task = 'mlm'
  c.train.batch_size, c.train.eval_batches = 8, 2
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.steps = c.train.eval_every = c.checkpoint.every = 20
  c.train.sample_tokens = 0
  logs = []
  pre = Trainer(c, str(tmp_path / 'mlm'), log=logs.append).run()
  assert 'bidirectional attention' in '\n'.join(logs)
  assert pre['eval/loss'] < np.log(256)  # better than a uniform guess over the bytes

  c.init_from = str(tmp_path / 'mlm')
  c.data.format, c.data.path = 'classify', str(write_classify(tmp_path / 'cls' / 'data.jsonl'))
  c.train.task, c.model.num_classes = 'classify', 3
  c.train.batch_size, c.train.eval_batches = 16, 10
  c.train.steps = c.train.eval_every = c.checkpoint.every = 40
  logs.clear()
  final = Trainer(c, str(tmp_path / 'cls_run'), log=logs.append).run()
  text = '\n'.join(logs)
  assert 'freshly initialised (not in the base checkpoint): classifier' in text
  majority = float(text.split('validation majority class ')[1].split('%')[0]) / 100
  assert final['eval/accuracy'] > majority + 0.2, (final, majority)

  # lm.evaluate's classification task uses the trained head (not zero-shot scoring), with
  # labels matched by name: here given in another order than the head's sorted classes.
  from lm import api
  from lm.eval.classification import HeadLabels, classification_task
  run = api.load(tmp_path / 'cls_run', log=lambda _: None)
  labels = sorted(run.data.label_names, reverse=True)
  held_out = write_classify(tmp_path / 'cls' / 'held_out.jsonl', n=120, seed=7)
  records = [(f'{held_out}:{i}', json.loads(line))
             for i, line in enumerate(held_out.read_text().splitlines(), 1)]
  result = classification_task(run, records, labels=labels,
                               predict_labels=HeadLabels(labels, batch_size=16))
  held_majority = max(np.bincount([labels.index(r['label']) for _, r in records])) / len(records)
  assert result['accuracy'] > held_majority + 0.2, (result['accuracy'], held_majority)
