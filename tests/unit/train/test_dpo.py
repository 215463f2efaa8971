"""Preference tuning (train.task='dpo'): pair layout and masks, the losses, learning a
preference, LoRA-DPO and the precomputed reference (docs/finetuning.md).

One tiny base language model is trained once on stdlib code; the DPO runs start from it.
The preference: real stdlib code (chosen) over the same lines reversed (rejected), on the
snippets whose reversal shows in the indentation (see _order_shows).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import module_xla_cache, optimized_xla, tiny  # noqa: F401  (fixtures)

from configs.default import get_config
from lm.config import ConfigDict, ConfigError, validate
from lm.data import preference as preference_data
from lm.data.tokenizers import ByteTokenizer
from lm.model import ModelConfig, ModelDef
from lm.run import load_run
from lm.train import Trainer, preference
from lm.train.metrics import read_metrics

SEQ_LEN = 192  # a pair of 3-line snippets of <= 80 chars fits a row whole


def _tiny(c, cache):
  return tiny(c, cache, seq_len=SEQ_LEN, eval_batches=4)


def _indent_follows_colons(code: str) -> bool:
  """Python's indentation rule on a snippet: the first line is not indented, and a line is
  indented past the one before it exactly when that one ends with ':'."""
  lines = code.rstrip('\n').split('\n')
  depth = [len(x) - len(x.lstrip(' ')) for x in lines]
  return depth[0] == 0 and all(a.endswith(':') == (d_b > d_a) for a, d_a, d_b in
                               zip(lines, depth, depth[1:], strict=False))


def _order_shows(record: dict) -> bool:
  """The chosen side keeps the indentation rule and the reversed one breaks it: the order is
  learnable from the layout. (With 'if a:/x/if b:' reversed, only the meaning tells.)"""
  return _indent_follows_colons(record['chosen']) and not _indent_follows_colons(
      record['rejected'])


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """(root, pairs.jsonl, base workdir): a 20-step code model and stdlib preference pairs."""
  root = tmp_path_factory.mktemp('dpo')
  records, seen = [], set()
  for r in preference_data.stdlib_records(100_000, max_chars=80, lines=3, order='reverse'):
    if _order_shows(r) and r['chosen'] not in seen:  # no copy of a held-out pair in train
      seen.add(r['chosen'])
      records.append(r)
  pairs = root / 'pairs.jsonl'
  pairs.write_text(''.join(json.dumps(r) + '\n' for r in records))
  corpus = root / 'corpus'
  corpus.mkdir()
  for i in range(10):
    (corpus / f'{i}.txt').write_text(''.join(r['prompt'] + r['chosen'] + '\n'
                                             for r in records[i * 25:(i + 1) * 25]))
  c = _tiny(get_config(), root / 'cache')
  c.data.source, c.data.path = 'text', str(corpus)
  c.train.steps = c.train.eval_every = c.checkpoint.every = 20
  Trainer(c, str(root / 'base'), log=lambda _: None).run()
  return root, pairs, root / 'base'


def _dpo(base, **overrides):
  root, pairs, workdir = base
  c = _tiny(get_config(), root / 'cache')
  c.init_from = str(workdir)
  c.data.format, c.data.source, c.data.path = 'preference', 'text', str(pairs)
  c.train.task = 'dpo'
  c.train.dpo.beta = 0.1
  c.optimizer.lr = 3e-3
  c.train.eval_batches = 21  # all 166 held-out pairs: accuracy in steps of ~0.006
  c.train.steps = c.train.eval_every = c.checkpoint.every = 240
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


# The short runs below check an equality or a change, not a rate: 4 eval batches (32 rows,
# 40-odd pairs) serve them at a fifth of the eval time of all 21.
FEW_EVAL = {'train.eval_batches': 4}


def _run(c, workdir):
  """(the step-0 eval row, the final metrics) of a DPO run: it evaluates before step 1."""
  final = Trainer(c, str(workdir), log=lambda _: None).run()
  rows = read_metrics(workdir / 'metrics.jsonl')
  assert rows[0]['step'] == 0
  return rows[0], final


# ---- data ---------------------------------------------------------------------------------


def test_pairs_are_packed_whole_with_loss_only_on_responses():
  tok = ByteTokenizer()
  plain = {'prompt': 'Q?', 'chosen': 'yes', 'rejected': 'no'}
  chat = {'prompt': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'A'},
                     {'role': 'user', 'content': 'more'}], 'chosen': 'ok', 'rejected': 'nah'}
  pairs = [preference_data.encode_pair(tok, r, 176)[0] for r in (plain, chat, plain)]
  rows = preference_data.pack_pairs(pairs, seq_len=175)
  assert rows.shape == (2, 3, 176)  # pairs 1-2 in row 0, pair 3 starts row 1: never split
  batch = preference_data.preference_batch(rows)
  tokens, segments = rows[0, 0], rows[0, 1]
  text = tok.decode(tokens[segments == 3].tolist())
  assert text.startswith('<|user|>\nhi\n<|assistant|>\nA<|end|>\n<|user|>\nmore\n'
                         '<|assistant|>\nok<|end|>')
  for seg in range(1, 5):  # chosen/rejected of pairs 1 and 2
    trained = tok.decode(batch['targets'][0][(batch['segment_ids'][0] == seg)
                                             & (batch['weights'][0] > 0)].tolist())
    # the response and its eos (which decodes to ''); the template's '\n' is not trained
    assert trained == {1: 'yes', 2: 'no', 3: 'ok<|end|>', 4: 'nah<|end|>'}[seg]
  assert set(np.unique(rows[1, 1])) == {0, 1, 2}


def test_packed_pair_log_probs_equal_each_pair_alone():
  tok = ByteTokenizer()
  model_def = ModelDef.create(ModelConfig(vocab_size=259, num_layers=1, width=32, num_heads=2,
                                          num_kv_heads=2, mlp_dim=64, max_len=128))
  params = model_def.init_params(jax.random.key(0))
  recs = [{'prompt': 'def f():', 'chosen': ' return 1', 'rejected': ' pass'},
          {'prompt': 'x = ', 'chosen': '2 + 2', 'rejected': 'two'}]
  pairs = [preference_data.encode_pair(tok, r, 96)[0] for r in recs]
  n = preference_data.max_pairs(95)
  packed = preference_data.preference_batch(preference_data.pack_pairs(pairs, 95))
  alone = preference_data.preference_batch(
      np.concatenate([preference_data.pack_pairs([p], 95) for p in pairs]))
  logp_packed, len_packed = preference.sequence_logps(model_def, params, packed, n)
  logp_alone, _ = preference.sequence_logps(model_def, params, alone, n)
  np.testing.assert_allclose(logp_packed[0, :2], logp_alone[:, 0], rtol=1e-5)
  assert np.all(np.asarray(logp_packed[0, :2]) < 0) and not np.any(len_packed[0, 2:])
  assert len_packed[0, 0].tolist() == [10, 6]  # ' return 1' + eos, ' pass' + eos


def test_pair_losses_match_a_hand_computation():
  pol = jnp.asarray([[[-3.0, -5.0], [-2.0, -1.0]]])
  ref = jnp.asarray([[[-4.0, -4.0], [-2.0, -2.0]]])
  lengths = jnp.asarray([[[3.0, 5.0], [0.0, 0.0]]])  # the second pair is padding
  sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
  dpo = ConfigDict({'loss': 'sigmoid', 'beta': 0.1, 'label_smoothing': 0.2, 'simpo_gamma': 0.5})
  loss, w, stats = preference.pair_losses(pol, ref, lengths, dpo)
  z = 0.1 * ((-3 + 4) - (-5 + 4))
  assert float(loss[0, 0]) == pytest.approx(-0.8 * math.log(sig(z)) - 0.2 * math.log(sig(-z)))
  assert w.tolist() == [[1.0, 0.0]] and float(stats['reward_correct']) == 1.0
  assert float(stats['chosen_reward']) == pytest.approx(0.1)
  simpo = ConfigDict({**dpo.to_dict(), 'loss': 'simpo', 'beta': 2.0, 'label_smoothing': 0.0})
  loss, _, stats = preference.pair_losses(pol, None, lengths, simpo)
  z = 2.0 * (-3 / 3 - -5 / 5) - 0.5
  assert float(loss[0, 0]) == pytest.approx(-math.log(sig(z)), rel=1e-5)
  assert float(stats['reward_correct']) == 0.5  # equal length-normalised rewards: a tie


def test_orpo_loss_matches_a_hand_computation():
  pol = jnp.asarray([[[-2.0, -6.0], [0.0, 0.0]]])
  lengths = jnp.asarray([[[4.0, 3.0], [0.0, 0.0]]])  # the second pair is padding
  orpo = ConfigDict({'loss': 'orpo', 'beta': 0.1, 'label_smoothing': 0.1, 'simpo_gamma': 0.5,
                     'orpo_lambda': 0.25})
  loss, w, stats = preference.pair_losses(pol, None, lengths, orpo)
  a_w, a_l = -2.0 / 4, -6.0 / 3  # mean token log-probabilities
  log_odds = lambda a: math.log(math.exp(a) / (1 - math.exp(a)))  # noqa: E731
  z = log_odds(a_w) - log_odds(a_l)
  sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
  odds_ratio = -0.9 * math.log(sig(z)) - 0.1 * math.log(sig(-z))
  assert float(loss[0, 0]) == pytest.approx(-a_w + 0.25 * odds_ratio, rel=1e-5)
  assert w.tolist() == [[1.0, 0.0]] and np.isfinite(np.asarray(loss)).all()  # padding: finite
  assert float(stats['chosen_reward']) == pytest.approx(0.1 * a_w)
  assert float(stats['reward_correct']) == 1.0
  grads = jax.grad(lambda p: jnp.sum(preference.pair_losses(p, None, lengths, orpo)[0]))(pol)
  assert np.isfinite(np.asarray(grads)).all()


def test_config_checks_name_the_keys(tmp_path):
  base = (tmp_path, tmp_path / 'pairs.jsonl', tmp_path / 'base')  # checked, never read
  bad = _dpo(base, **{'data.format': 'text'})
  with pytest.raises(ConfigError, match=r"data.format='preference'"):
    validate(bad, num_devices=8)
  for loss in ('simpo', 'orpo'):
    bad = _dpo(base, **{'train.dpo.loss': loss, 'train.dpo.reference': 'precomputed'})
    with pytest.raises(ConfigError, match=rf"train.dpo.loss='{loss}' is reference-free"):
      validate(bad, num_devices=8)


# ---- training -----------------------------------------------------------------------------


@pytest.mark.usefixtures('optimized_xla')  # 240 steps: running, not compiling, is the cost
def test_dpo_starts_at_log2_and_learns_to_prefer_real_code(base, tmp_path):
  c = _dpo(base)
  trainer = Trainer(c, str(tmp_path / 'dpo'), log=lambda _: None)
  held_out = trainer.data.stats['validation_pairs']
  assert held_out >= 150 and held_out <= c.train.eval_batches * c.train.batch_size, held_out
  final = trainer.run()
  start = read_metrics(tmp_path / 'dpo' / 'metrics.jsonl')[0]
  assert start['step'] == 0
  assert start['eval/loss'] == pytest.approx(math.log(2), abs=1e-6)
  assert start['eval/reward_accuracy'] == 0.5 and start['eval/margin'] == 0.0
  # Measured over the 166 held-out pairs (2-layer width 32; base and DPO seed equal):
  # seed 0 0.992 at step 160, seed 1 0.992 at 240 (0.85-0.89 up to step 120), seed 2 0.969
  # at 80; this test (seed 0) passed at 240.
  assert final['eval/reward_accuracy'] >= 0.9, final
  assert final['eval/margin'] > 0 and final['eval/loss'] < 0.3
  rows = read_metrics(tmp_path / 'dpo' / 'metrics.jsonl')
  assert any('train/reward_accuracy' in r for r in rows)  # the train rows carry DPO's metrics


def test_lora_dpo_changes_only_the_adapters(base, tmp_path):
  c = _dpo(base, **{**FEW_EVAL, 'lora.rank': 4, 'train.steps': 10, 'train.eval_every': 10,
                    'checkpoint.every': 10, 'optimizer.lr': 3e-2})
  start, final = _run(c, tmp_path / 'lora')
  assert start['eval/loss'] == pytest.approx(math.log(2), abs=1e-6)  # the base: adapters off
  assert final['eval/margin'] != 0.0
  tuned = jax.tree_util.tree_flatten_with_path(load_run(tmp_path / 'lora').params)[0]
  base_params = {jax.tree_util.keystr(p): x
                 for p, x in jax.tree_util.tree_flatten_with_path(load_run(base[2]).params)[0]}
  changed = [jax.tree_util.keystr(p) for p, x in tuned
             if 'lora' in jax.tree_util.keystr(p) and np.any(np.asarray(x) != 0)]
  assert changed and all('lora_b' in k or 'lora_a' in k for k in changed)
  for p, x in tuned:
    key = jax.tree_util.keystr(p)
    if 'lora' not in key:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(base_params[key]), err_msg=key)


def test_orpo_trains_without_a_reference(base, tmp_path):
  c = _dpo(base, **{**FEW_EVAL, 'train.dpo.loss': 'orpo', 'train.steps': 5, 'train.eval_every': 5,
                    'checkpoint.every': 5})
  trainer = Trainer(c, str(tmp_path / 'orpo'), log=lambda _: None)
  final = trainer.run()
  assert trainer.setup.frozen.params == {}  # reference-free: no second model was loaded
  start = read_metrics(tmp_path / 'orpo' / 'metrics.jsonl')[0]
  assert start['step'] == 0 and final['eval/loss'] < start['eval/loss'], (start, final)


def test_precomputed_reference_trains_as_the_model_reference(base, tmp_path):
  short = {**FEW_EVAL, 'train.steps': 5, 'train.eval_every': 5, 'checkpoint.every': 5}
  runs = {}
  for ref in ('model', 'precomputed'):
    c = _dpo(base, **{**short, 'train.dpo.reference': ref})
    runs[ref] = Trainer(c, str(tmp_path / ref), log=lambda _: None).run()
  assert runs['precomputed']['train/loss'] == pytest.approx(runs['model']['train/loss'],
                                                            abs=1e-4)
  assert runs['precomputed']['eval/loss'] == pytest.approx(runs['model']['eval/loss'], abs=1e-4)
