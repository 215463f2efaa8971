"""Domains: the code/prose splitter, the data mixture (domain ids on every token), per-domain
eval in the training output, and branch-train-merge (identical branches = the original)."""

import pathlib

import jax
import numpy as np
import pytest

from configs.default import get_config
from lm import config as config_lib
from lm.data import domains, mixture, packing, split, tokenizers
from lm.data.mixture import prepare_mixture
from lm.tools import btm
from lm.train import Trainer
from lm.train.metrics import read_metrics

SOURCE = '''"""Module docstring."""
# a comment line
import os  # trailing comment


def f(x):
  """Return x doubled."""
  s = "a string that is code"
  return 2 * x  # why two
'''


def test_python_splits_into_code_and_its_docstrings_and_comments():
  code, prose = domains.split_python(SOURCE)
  assert 'docstring' not in code and '#' not in code and 'doubled' not in code
  assert 'import os' in code and '"a string that is code"' in code and 'return 2 * x' in code
  assert prose.split('\n\n') == ['Module docstring.', 'a comment line', 'trailing comment',
                                 'Return x doubled.', 'why two']
  assert domains.split_python('def broken(:\n  """x"""\n') == ('def broken(:\n  """x"""\n', '')


def _write_domains(root: pathlib.Path) -> tuple[str, str]:
  """Two domains that share no letters: 'a'-words and 'b'-words, 6 documents each."""
  for name, letter in (('alpha', 'a'), ('beta', 'b')):
    d = root / name
    d.mkdir(parents=True)
    for i in range(6):
      words = [letter * (1 + (i * 7 + j) % 5) for j in range(60)]
      (d / f'{i}.txt').write_text(' '.join(words) + '\n')
  return str(root / 'alpha'), str(root / 'beta')


def _config(tmp: pathlib.Path, weights=(1.0, 1.0)):
  alpha, beta = _write_domains(tmp / 'corpus') if not (tmp / 'corpus').exists() else (
      str(tmp / 'corpus' / 'alpha'), str(tmp / 'corpus' / 'beta'))
  c = get_config()
  c.data.mixture = (('alpha', alpha, weights[0]), ('beta', beta, weights[1]))
  c.data.tokenizer.kind = 'byte'
  c.data.seq_len = 16
  c.data.val_fraction = 0.3
  c.data.cache_dir = str(tmp / 'cache')
  return c


def test_mixture_batches_carry_each_tokens_domain(tmp_path):
  cfg = _config(tmp_path)
  data = prepare_mixture(cfg.data, log=lambda _: None)
  tok = data.tokenizer
  letters = {0: ord('a'), 1: ord('b')}
  it = data.train_iterator(batch_size=8, seed=0)
  seen = set()
  for _ in range(3):
    batch = next(it)
    assert batch['domains'].shape == batch['inputs'].shape
    for row, dom in zip(batch['inputs'], batch['domains'][:, 0], strict=True):
      text = tok.decode([t for t in row if t not in (tok.bos_id, tok.eos_id)])
      assert set(text) <= {chr(letters[int(dom)]), ' ', '\n'}, (text, dom)
      seen.add(int(dom))
  assert seen == {0, 1}
  # The iterator's state resumes exactly.
  state = it.get_state()
  expected = next(it)
  it2 = data.train_iterator(batch_size=8, seed=0)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)['inputs'], expected['inputs'])
  # Weight 0: the domain is never trained on.
  only_beta = prepare_mixture(_config(tmp_path, (0.0, 1.0)).data, log=lambda _: None)
  assert (next(only_beta.train_iterator(batch_size=16, seed=1))['domains'] == 1).all()
  # Evaluation: both domains, in equal shares.
  eval_domains = np.concatenate([b['domains'][:, 0] for b in
                                 data.eval_batches(batch_size=4, num_batches=2)])
  assert np.bincount(eval_domains).tolist() == [4, 4]


@pytest.mark.parametrize('stride', [0, 5])
def test_streamed_mixture_rows_are_the_in_memory_packing(tmp_path, stride):
  """Every domain's packed rows (and the tokenizer) are what packing all of a domain's
  split in memory gives: the code before streaming (read, split, encode, pack)."""
  cfg = _config(tmp_path)
  cfg.data.tokenizer.kind = 'char'  # trained on the texts: a different text order shows
  cfg.data.train_row_stride = stride
  (tmp_path / 'one.txt').write_text('just one document, split by its tail. ' * 20)
  cfg.data.mixture = (*cfg.data.mixture, ('one', str(tmp_path / 'one.txt'), 1.0))
  data = prepare_mixture(cfg.data, log=lambda _: None)
  splits = [split.split_documents(mixture.read_domain(cfg.data, src),
                                  'tail' if name == 'one' else cfg.data.split,
                                  cfg.data.val_fraction) for name, src, _ in cfg.data.mixture]
  ref_tok = tokenizers.CharTokenizer.train([d.text for sp in splits for d in sp['train']])
  tok = data.tokenizer
  texts = [d.text for sp in splits for part in sp.values() for d in part]
  assert tok.vocab_size == ref_tok.vocab_size
  assert all((a == b).all() for a, b in zip(tok.encode_batch(texts), ref_tok.encode_batch(texts),
                                            strict=True))
  for d, sp in enumerate(splits):
    for name, docs in sp.items():
      ids = tok.encode_batch([doc.text for doc in docs])
      order = packing.document_order(len(ids))
      tokens_NL, segments_NL = packing.pack([ids[i] for i in order], cfg.data.seq_len,
                                            tok.bos_id, tok.eos_id,
                                            stride=stride if name == 'train' else 0)
      np.testing.assert_array_equal(data.rows(name, d), np.stack([tokens_NL, segments_NL], 1))
      assert data.stats[cfg.data.mixture[d][0]][f'{name}_docs'] == len(docs)
  assert data.meta['val_text_sample'] == splits[0]['validation'][0].text[:4096]


def test_mixture_config_errors_name_the_entry(tmp_path):
  c = _config(tmp_path)
  c.data.mixture = (('alpha', str(tmp_path / 'missing.txt'), 1.0), ('alpha', 'stdlib:docs', 1))
  c.model.moe.num_experts, c.model.moe.routing, c.model.moe.num_domains = 4, 'domain', 3
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, num_devices=8)
  text = str(e.value)
  assert 'data.mixture[0]' in text and 'missing.txt' in text
  assert "data.mixture[1] has an empty or repeated domain name 'alpha'" in text
  assert "'stdlib:docs'" in text
  assert 'model.moe.num_experts=4 is not divisible by model.moe.num_domains=3' in text


@pytest.mark.slow
def test_domain_moe_run_reports_each_domain_and_btm_of_identical_branches_is_the_original(
    tmp_path):
  c = _config(tmp_path)
  m = c.model
  m.num_layers, m.width, m.num_heads, m.num_kv_heads, m.mlp_dim = 2, 32, 2, 2, 64
  m.unroll_layers = False
  m.moe.num_experts, m.moe.routing, m.moe.num_domains, m.moe.top_k = 4, 'domain+learned', 2, 1
  t = c.train
  t.steps, t.batch_size, t.steps_per_dispatch, t.log_every = 4, 8, 2, 2
  t.eval_every, t.eval_batches, t.sample_tokens = 4, 2, 0
  c.checkpoint.every, c.checkpoint.async_save = 4, False
  parent = str(tmp_path / 'parent')
  final = Trainer(c, parent, log=lambda _: None).run()
  rows = read_metrics(pathlib.Path(parent) / 'metrics.jsonl')
  for name in ('alpha', 'beta'):
    assert np.isfinite(rows[-1][f'eval/{name}/loss'])
  assert 'moe/layer1/expert3_tokens' in rows[-1] and 'moe/layer0/load_balance' in rows[-1]
  # Each domain's tokens went only to its own two experts.
  for layer in (0, 1):
    a = [rows[-1][f'moe/layer{layer}/expert{e}_tokens'] for e in range(4)]
    assert sum(a) == pytest.approx(1.0, abs=1e-6)

  quiet = lambda _: None  # noqa: E731
  merged = btm.merge([parent, parent], str(tmp_path / 'merged'), log=quiet)
  from lm import api
  original, averaged = api.load(parent, log=quiet), api.load(merged, log=quiet)
  evaluated = original.evaluate()  # lm.api reports each domain too
  for key in ('eval/loss', 'eval/alpha/loss', 'eval/beta/loss'):
    assert evaluated[key] == pytest.approx(final[key], rel=1e-5), key
  for x, y in zip(jax.tree.leaves(original.params), jax.tree.leaves(averaged.params),
                  strict=True):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)
  ensemble = btm.evaluate([parent, parent], 'ensemble', log=quiet)
  for key in ('eval/loss', 'eval/alpha/loss', 'eval/beta/loss'):
    assert ensemble[key] == pytest.approx(final[key], rel=1e-5), key

  # A branch starts from the parent's parameters and trains on its domain only.
  configs = btm.branch_configs(parent, steps=2)
  assert [e[2] for e in configs['beta'].data.mixture] == [0.0, 1.0]
  btm.branch(parent, str(tmp_path / 'branches'), steps=2, domains=['beta'], log=quiet)
  branch_params = api.load(tmp_path / 'branches' / 'beta', log=quiet).params
  fresh = Trainer(c, str(tmp_path / 'unused'), log=quiet).model_def.init_params(
      jax.random.key(0))
  dist = lambda a, b: sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))  # noqa: E731
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  assert dist(branch_params, original.params) < 0.1 * dist(fresh, original.params)
