"""Perplexity on every kind of run (sft scores its responses, a mixture every domain, a
classification or masked-LM run is refused with the task to use instead) and the lm-eval
adapter's generation settings (the prompt keeps what fits, top_k/top_p are used, unknown
kwargs are refused). Runs are written with lm.run.write_run (random weights: the
properties do not depend on training)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from lm_eval.api.instance import Instance

from configs.default import get_config
from lm import config as config_lib
from lm.data import supervised
from lm.data.packing import rows_to_batch
from lm.data.tokenizers import ByteTokenizer
from lm.errors import InputError
from lm.eval.harness import LmJax
from lm.eval.perplexity import perplexity, text_parts
from lm.eval.tasks import evaluate
from lm.infer import SamplingConfig
from lm.model import ModelDef
from lm.run import load_run, model_config, write_run

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
TEXT = 'the quick brown fox jumps over the lazy dog. a stitch in time saves nine. '


def _run(root: Path, name: str, path: Path, **overrides):
  """A written run of a tiny byte-level model with `overrides` (dotted keys with '__')."""
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(path), str(root / 'cache')
  c.data.seq_len, c.data.tokenizer.kind, c.data.val_fraction = 32, 'byte', 0.25
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.train.batch_size = 8
  for key, value in overrides.items():
    *parents, leaf = key.split('__')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  c = config_lib.resolve(c, num_devices=jax.device_count())
  tokenizer = ByteTokenizer()
  model_def = ModelDef.create(model_config(c, tokenizer.vocab_size))
  write_run(root / name, c, model_def.init_params(jax.random.key(0)), tokenizer)
  return load_run(root / name)


def _direct_loss(run, batch):
  logits = np.asarray(jax.jit(lambda p, b: run.model_def.merge(p)(
      b['inputs'], b['positions'], b['segment_ids']))(run.params, batch), np.float64)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  ce = -np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
  w = batch['weights']
  return float((ce * w).sum() / w.sum()), int(w.sum())


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('runs')


def test_sft_perplexity_scores_the_response_tokens_only(root):
  path = root / 'sft.jsonl'
  path.write_text(''.join(json.dumps({'prompt': f'Q{i}: what is {i} + {i}?\nA:',
                                      'response': f' {2 * i}.'}) + '\n' for i in range(24)))
  run = _run(root, 'sft', path, data__format='sft', train__task='sft')
  got = perplexity(run)
  data = supervised.prepare(run.config.data, tokenizer=run.tokenizer, log=lambda _: None)
  rows = data.eval_batches(batch_size=1000, num_batches=1)[0]
  loss, tokens = _direct_loss(run, rows)
  assert got['scored'] == 'response tokens' and got['split'] == 'validation'
  assert got['tokens'] == tokens == data.stats['validation_trained_tokens']
  assert got['loss'] == pytest.approx(loss, abs=1e-5)
  every = perplexity(run, split_name='all')
  assert every['documents'] == 24 and every['tokens'] > got['tokens']


def test_mixture_perplexity_scores_every_domain_and_overall(root):
  a, b = root / 'a.txt', root / 'b.txt'
  a.write_text(TEXT * 12)
  b.write_text('def f(x):\n  return x * 2\n' * 20)
  run = _run(root, 'mix', a, data__mixture=(('prose', str(a), 1.0), ('code', str(b), 1.0)),
             data__split='tail')
  got = perplexity(run)
  assert set(got['domains']) == {'prose', 'code'}
  assert got['tokens'] == sum(d['tokens'] for d in got['domains'].values())
  total = sum(d['loss'] * d['tokens'] for d in got['domains'].values())
  assert got['loss'] == pytest.approx(total / got['tokens'], rel=1e-6)
  # Each domain is its own validation text, as a single source scores it.
  for name, path in (('prose', a), ('code', b)):
    alone = perplexity(run, overrides={'path': str(path)}, split_name='validation')
    assert got['domains'][name]['loss'] == pytest.approx(alone['loss'], abs=1e-6)
    assert got['domains'][name]['tokens'] == alone['tokens']
  assert got['domains']['prose']['loss'] != pytest.approx(got['domains']['code']['loss'])


def test_perplexity_refuses_classification_and_masked_lm_runs(root):
  path = root / 'cls.jsonl'
  path.write_text(''.join(json.dumps({'text': f'review {i}', 'label': ['neg', 'pos'][i % 2]})
                          + '\n' for i in range(12)))
  cls = _run(root, 'cls', path, data__format='classify', train__task='classify',
             model__num_classes=2)
  with pytest.raises(InputError, match='--task=classification'):
    perplexity(cls)
  text = root / 'mlm.txt'
  text.write_text(TEXT * 10)
  # (model.vocab_size given: lm.run.write_run of an encoder with vocab_size 0 saves the
  # tokenizer's size, which load_run then takes without the [MASK] id)
  mlm = _run(root, 'mlm', text, model__causal=False, train__task='mlm', model__vocab_size=260)
  with pytest.raises(InputError, match='masked-LM encoder.*no perplexity'):
    perplexity(mlm)

  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, '-m', 'lm.evaluate', f'--workdir={root / "cls"}',
                        '--task=perplexity'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.startswith('error: --task=perplexity:') and 'Traceback' not in out.stderr
  assert '--task=classification' in out.stderr
  assert not (root / 'cls' / 'eval').exists()


def _request(context, **kwargs):
  return Instance(request_type='generate_until', doc={}, arguments=(context, kwargs), idx=0)


def test_generate_until_keeps_the_prompt_that_fits_and_uses_top_k_top_p(root):
  text = root / 'plain.txt'
  text.write_text(TEXT * 10)
  run = _run(root, 'plain', text)
  lm = LmJax(run=run, batch_size=2)
  context = lm.max_length
  long_prompt, short_prompt = TEXT * 3, 'the'
  # Room for the generation first; but the prompt keeps up to half the context.
  until, toks, sampling = lm.generation_settings(long_prompt, {'max_gen_toks': 10})
  assert toks == 10 and len(lm.generator.prompt_ids(long_prompt, toks)) == context - 10
  _, toks, _ = lm.generation_settings(long_prompt, {'max_gen_toks': context - 1})
  assert toks == context - context // 2
  assert len(lm.generator.prompt_ids(long_prompt, toks)) == context // 2
  _, toks, _ = lm.generation_settings(short_prompt, {'max_gen_toks': 10 * context})
  assert toks == context - len(lm.generator.prompt_ids(short_prompt, 1))  # all of it kept
  # Sampling settings pass through; unknown generation kwargs are refused.
  until, _, sampling = lm.generation_settings(
      'x', {'until': '\n', 'do_sample': True, 'temperature': 0.7, 'top_k': 5, 'top_p': 0.9})
  assert until == ('\n',) and sampling == SamplingConfig(temperature=0.7, top_k=5, top_p=0.9)
  with pytest.raises(InputError, match='num_beams'):
    lm.generation_settings('x', {'num_beams': 4})
  # top_k=1 samples the most likely token: the greedy continuation, at any temperature.
  greedy = lm.generate_until([_request('the quick', max_gen_toks=8)])
  top1 = lm.generate_until([_request('the quick', max_gen_toks=8, do_sample=True,
                                     temperature=2.0, top_k=1)])
  hot = lm.generate_until([_request('the quick', max_gen_toks=8, do_sample=True,
                                    temperature=2.0)])
  assert top1 == greedy and hot != greedy


def test_a_domain_routed_mixture_scores_each_domain_through_its_own_experts(root):
  a, b = root / 'ra.txt', root / 'rb.txt'
  a.write_text(TEXT * 12)
  b.write_text('def f(x):\n  return x * 2\n' * 20)
  run = _run(root, 'routed', a, data__mixture=(('prose', str(a), 1.0), ('code', str(b), 1.0)),
             data__split='tail', model__moe__num_experts=2, model__moe__routing='domain',
             model__moe__num_domains=2, model__moe__capacity_factor=0.0)
  # Random experts: make the two domains' experts differ more than their init does.
  run = dataclasses.replace(run, params=jax.tree.map(lambda x: x * 3.0, run.params))
  got = perplexity(run)
  parts = text_parts(run, run.config.data, 'validation')
  for d, part in enumerate(parts):
    batch = rows_to_batch(part.rows)
    losses = []
    for routed_as in (d, 1 - d):
      logits = jax.jit(lambda p, bt, r: run.model_def.merge(p)(
          bt['inputs'], bt['positions'], bt['segment_ids'], domains_BT=r))(
              run.params, batch, np.full(batch['inputs'].shape, routed_as, np.int32))
      logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
      ce = -np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
      losses.append(float((ce * batch['weights']).sum() / batch['weights'].sum()))
    assert got['domains'][part.name]['loss'] == pytest.approx(losses[0], abs=1e-5)
    assert got['domains'][part.name]['loss'] != pytest.approx(losses[1], abs=1e-3)
  with pytest.raises(InputError, match="routes tokens by their data.mixture domain"):
    perplexity(run, overrides={'path': str(a)})


def test_a_classification_head_run_names_its_classes_without_its_records(root):
  path = root / 'head.jsonl'
  path.write_text(''.join(json.dumps({'text': f'review {i} ' * (i % 5), 'label': ['neg', 'pos'][
      i % 2]}) + '\n' for i in range(12)))
  run = _run(root, 'head', path, data__format='classify', train__task='classify',
             model__num_classes=2)
  leaves, treedef = jax.tree.flatten(run.params)  # random weights, far from a constant head
  keys = jax.random.split(jax.random.key(3), len(leaves))
  noisy = [x + jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
  run = dataclasses.replace(run, params=jax.tree.unflatten(treedef, noisy))
  texts = ['a', 'zzzz zz', 'the quick brown fox', '12345', 'Q?', '~~ ~ ~~', 'hello', 'xyzzy']
  rows = [(f't:{i}', {'text': t, 'label': 'pos'}) for i, t in enumerate(texts)]
  tokens, _ = supervised.classify_rows(run.tokenizer, texts, run.config.data.seq_len)
  batch = supervised.classify_batch(tokens, np.zeros(len(texts), np.int32))
  logits = np.asarray(run.model_def.merge(run.params).classify(
      batch['inputs'], batch['positions'], batch['segment_ids'], batch['lengths']))
  want = [['neg', 'pos'][k] for k in logits.argmax(1)]  # training numbers labels sorted
  assert len(set(want)) == 2  # both classes occur: the naming is really tested

  def predicted(labels):
    got = evaluate(run, 'classification', {'records': rows, 'labels': labels})
    return [s['predicted'] for s in got['samples']]

  assert predicted(['pos', 'neg']) == want  # matched by name, in any --labels order
  path.unlink()  # the training records are gone: --labels sorted names the classes
  assert predicted(['pos', 'neg']) == want
  with pytest.raises(InputError, match='head has 2 classes'):
    predicted(['neg', 'pos', 'meh'])
