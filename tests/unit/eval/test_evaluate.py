"""lm.eval and `python -m lm.evaluate` on a tiny trained run: perplexity agrees with
training's eval, the lm-eval adapter's scores equal a direct forward pass, tasks write
their JSON and markdown, and bad inputs name the file and field."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lm import api
from lm.data import prepare, store
from lm.data.packing import rows_to_batch
from lm.eval import records
from lm.eval.classification import ZeroShotLabels, classification_task
from lm.eval.generation import generation_task
from lm.eval.harness import NAME, LmJax
from lm.eval.perplexity import perplexity, text_parts
from lm.run import load_run
from lm.train.metrics import read_metrics

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
SENTENCES = ['the quick brown fox jumps over the lazy dog.', 'a stitch in time saves nine.',
             'all that glitters is not gold.', 'to be or not to be, that is the question.']
REVIEWS = [('what a good film, great fun', 'pos'), ('a dull and bad film', 'neg'),
           ('great acting, good story', 'pos'), ('bad, boring, dull', 'neg'),
           ('the quick brown fox', 'pos'), ('not gold at all', 'neg')]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(workdir, run): 10 steps of a 2-layer width-32 byte-level model on a few sentences,
  loaded on the run's own (8-device) mesh as lm.evaluate loads it."""
  root = tmp_path_factory.mktemp('evalh')
  corpus = root / 'corpus'
  corpus.mkdir()
  rng = np.random.default_rng(0)
  for i in range(16):
    picks = rng.choice(len(SENTENCES), size=12)
    (corpus / f'doc{i:02d}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  config = api.load_config('configs/default.py', {
      'data.source': 'text', 'data.path': str(corpus), 'data.cache_dir': str(root / 'cache'),
      'data.val_fraction': 0.25, 'data.tokenizer.kind': 'byte', 'data.seq_len': 32,
      'model.num_layers': 2, 'model.width': 32, 'model.mlp_dim': 64,
      'model.num_heads': 2, 'model.num_kv_heads': 2,
      'train.steps': 10, 'train.batch_size': 8, 'train.eval_every': 10,
      'train.log_every': 10, 'train.steps_per_dispatch': 10, 'train.eval_batches': 2,
      'train.sample_tokens': 0, 'checkpoint.every': 10, 'checkpoint.async_save': False,
  }, optimizer__lr=1e-2, optimizer__warmup_steps=5)
  api.train(config, root / 'run')
  return root / 'run', load_run(root / 'run', mesh='run')


@pytest.fixture(scope='module')
def run1(tiny):
  """The tiny run on one device (load_run's default): cheaper to compile than 8."""
  return load_run(tiny[0])


_FORWARD: dict = {}


def _forward(run, tokens_1T):
  if id(run) not in _FORWARD:
    _FORWARD[id(run)] = jax.jit(lambda p, t: run.model_def.merge(p)(t))
  return _FORWARD[id(run)](run.params, tokens_1T)


@pytest.fixture(scope='module')
def lm(run1):
  """The lm-eval adapter over the one-device run; its compiled pieces are shared."""
  return LmJax(run=run1, batch_size=4)


def _logprobs(run, tokens):
  """[T-1, V] log-softmax of a direct forward pass over `tokens` (one row, no batching;
  right-padded to max_len, which the causal mask keeps from the real positions)."""
  n = len(tokens) - 1
  padded = np.zeros((1, run.model_def.cfg.max_len), np.int32)
  padded[0, :n] = tokens[:-1]
  logits = np.asarray(_forward(run, padded), np.float64)[0, :n]
  return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def _direct_score(run, context_ids, continuation_ids):
  """Sum of the continuation's log-probs and whether each is the argmax, from one forward
  pass over the last max_len + 1 tokens."""
  max_len = run.model_def.cfg.max_len
  tokens = (list(context_ids) + list(continuation_ids))[-(max_len + 1):]
  logp = _logprobs(run, tokens)
  n = len(continuation_ids)
  rows, targets = np.arange(len(tokens) - 1)[-n:], np.asarray(tokens[1:])[-n:]
  return float(logp[rows, targets].sum()), bool((logp[rows].argmax(-1) == targets).all())


def _direct_loss(run, batch):
  """(weighted mean next-token loss, weight) of a batch from one direct forward pass."""
  logits = np.asarray(jax.jit(lambda p, b: run.model_def.merge(p)(
      b['inputs'], b['positions'], b['segment_ids']))(run.params, batch), np.float64)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  ce = -np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
  w = batch['weights']
  return float((ce * w).sum() / w.sum()), int(w.sum())


# ---- perplexity --------------------------------------------------------------------------


def test_perplexity_equals_the_training_eval_and_the_direct_loss(tiny, run1, tmp_path):
  workdir, run = tiny
  logged = read_metrics(workdir / 'metrics.jsonl')[-1]
  same_batches = perplexity(run, eval_batches=run.config.train.eval_batches)
  assert same_batches['loss'] == pytest.approx(logged['eval/loss'], abs=1e-5)
  assert same_batches['bits_per_byte'] == pytest.approx(logged['eval/bits_per_byte'], abs=1e-5)

  # Evaluation packs the validation text itself, with the run's tokenizer: the very rows
  # training's data preparation stored.
  prepared = prepare(run.config.data, log=lambda _: None)
  rows = text_parts(run, run.config.data, 'validation')[0].rows
  np.testing.assert_array_equal(rows, prepared.rows('validation'))

  # Every validation row once: the weighted mean of per-token losses of a direct forward.
  every = perplexity(run1)
  loss, tokens = _direct_loss(run1, rows_to_batch(rows))
  assert every['rows'] == len(rows) and every['tokens'] == tokens
  assert every['loss'] == pytest.approx(loss, abs=1e-5)
  assert every['perplexity'] == pytest.approx(np.exp(every['loss']), rel=1e-6)
  assert every['loss'] != pytest.approx(same_batches['loss'], abs=1e-6)  # other rows
  assert 'domains' not in every

  # The same documents as an outside text source give the same rows, so the same loss.
  texts = store.read_texts(prepared.root / 'documents', 'validation')
  path = tmp_path / 'val.jsonl'
  path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
  outside = perplexity(run1, overrides={'source': 'text', 'path': str(path)})
  assert outside['split'] == 'all' and outside['documents'] == len(texts)
  assert outside['loss'] == pytest.approx(every['loss'], abs=1e-6)
  assert outside['bits_per_byte'] == pytest.approx(every['bits_per_byte'], abs=1e-6)


# ---- the lm-eval adapter -----------------------------------------------------------------


def _requests(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_equals_a_direct_forward_and_flags_greedy(run1, lm):
  run, model = run1, lm
  assert get_model(NAME) is LmJax  # lm-eval finds it by name
  tok, max_len = run.tokenizer, run.model_def.cfg.max_len
  long_context = ' '.join(SENTENCES)  # longer than max_len: truncated from the left
  assert len(tok.encode(long_context)) > 2 * max_len
  prompt = 'the quick brown'
  # The model's own greedy continuation of the prompt, from a direct forward pass.
  ids = [tok.bos_id] + tok.encode(prompt)
  for _ in range(4):
    ids.append(int(_logprobs(run, ids + [0])[-1].argmax()))
  greedy_text = tok.decode(ids[-4:])
  wrong = chr(ord(greedy_text[0]) ^ 1) + greedy_text[1:]
  pairs = [(prompt, greedy_text), (prompt, wrong), ('', 'the quick'), (long_context, ' fox'),
           ('a stitch in', ' time saves nine.'), ('x', '')]
  got = model.loglikelihood(_requests('loglikelihood', pairs))
  for (context, continuation), (logp, is_greedy) in zip(pairs[:-1], got[:-1], strict=True):
    want_logp, want_greedy = _direct_score(run, [tok.bos_id] + tok.encode(context),
                                           tok.encode(continuation))
    assert logp == pytest.approx(want_logp, abs=1e-4), (context, continuation)
    assert is_greedy == want_greedy
  assert got[0][1] is True and got[1][1] is False
  assert got[0][0] > got[1][0]
  assert got[-1] == (0.0, True)  # an empty continuation has probability 1


def test_loglikelihood_rolling_is_the_total_loglikelihood_of_the_text(run1, lm):
  run, model = run1, lm
  tok, max_len = run.tokenizer, run.model_def.cfg.max_len
  short, long = 'all that glitters', ' '.join(SENTENCES) * 2
  got = model.loglikelihood_rolling(_requests('loglikelihood_rolling', [(short,), (long,)]))
  # A text that fits: one forward pass over bos + text scores every token.
  ids = [tok.bos_id] + tok.encode(short)
  logp = _logprobs(run, ids)
  assert got[0] == pytest.approx(float(logp[np.arange(len(ids) - 1), ids[1:]].sum()), abs=1e-4)
  # A longer text: lm-eval's own rolling windows, each scored by a direct forward pass.
  want = 0.0
  for window in get_rolling_token_windows(tok.encode(long), prefix_token=tok.bos_id,
                                          max_seq_len=max_len, context_len=1):
    context, continuation = make_disjoint_window(window)
    want += _direct_score(run, context, continuation)[0]
  assert got[1] == pytest.approx(want, abs=1e-3)


def _greedy(run, prompt_ids, num_tokens):
  """Greedy continuation by full recomputation (direct forward passes)."""
  ids = list(prompt_ids)
  for _ in range(num_tokens):
    ids.append(int(_logprobs(run, ids + [0])[-1].argmax()))
    if ids[-1] == run.tokenizer.eos_id:  # the end of a document ends generation
      break
  return ids[len(prompt_ids):]


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(run1, lm):
  run, model = run1, lm
  tok = run.tokenizer
  prompts = ['the quick brown', 'a stitch', 'to be or not']
  full = [tok.decode(_greedy(run, [tok.bos_id] + tok.encode(p), 8)) for p in prompts]
  stop = full[0][3:5]  # a string the first continuation reaches
  reqs = _requests('generate_until', [(p, {'until': [stop], 'max_gen_toks': 8}) for p in prompts]
                   + [(p, {'max_gen_toks': 8}) for p in prompts])
  got = model.generate_until(reqs)
  assert got[3:] == full
  assert got[:3] == [text.split(stop)[0] for text in full]
  assert len(got[0]) < len(full[0])  # the stop string did cut it


# ---- classification and generation tasks -------------------------------------------------


def _records(rows):
  return [(f'test:{i + 1}', r) for i, r in enumerate(rows)]


@pytest.fixture(scope='module')
def zero_shot(run1, lm):
  """The zero-shot classification task on REVIEWS (labels neg, pos)."""
  rows = [{'text': t, 'label': y} for t, y in REVIEWS]
  return classification_task(run1, _records(rows), labels=['neg', 'pos'],
                             predict_labels=ZeroShotLabels(['neg', 'pos'], scorer=lm.scorer))


def test_zero_shot_classification_picks_the_most_likely_label(run1, zero_shot):
  run, tok, got = run1, run1.tokenizer, zero_shot
  rows = [{'text': t, 'label': y} for t, y in REVIEWS]
  want = []
  for text, _ in REVIEWS:
    scores = [_direct_score(run, [tok.bos_id] + tok.encode(text), tok.encode(' ' + label))[0]
              for label in ('neg', 'pos')]
    want.append('pos' if scores[1] > scores[0] else 'neg')
  assert [s['predicted'] for s in got['samples']] == want
  assert got['accuracy'] == pytest.approx(np.mean([w == y for w, (_, y) in zip(
      want, REVIEWS, strict=True)]))
  # Any predict_labels hook plugs in: always 'pos' is right on the 3 positive reviews.
  always_pos = classification_task(run, _records(rows), labels=['neg', 'pos'],
                                   predict_labels=lambda run, texts: [1] * len(texts))
  assert always_pos['confusion_matrix'] == [[0, 3], [0, 3]]
  assert always_pos['accuracy'] == 0.5 and always_pos['per_class']['pos']['recall'] == 1.0
  with pytest.raises(records.EvalInputError, match="test:2: label 'meh'"):
    classification_task(run, _records([rows[0], {'text': 'x', 'label': 'meh'}]),
                        labels=['neg', 'pos'], predict_labels=lambda run, texts: [0, 0])


def test_generation_task_scores_greedy_continuations(run1, lm):
  run, tok = run1, run1.tokenizer
  sources = ['the quick brown', 'a stitch in', 'all that']
  full = [tok.decode(_greedy(run, [tok.bos_id] + tok.encode(s), 8)) for s in sources]
  rows = [{'source': s, 'reference': 'fox jumps over the lazy dog'} for s in sources]
  got = generation_task(run, _records(rows), source_field='source',
                        reference_field='reference', max_new_tokens=8, generator=lm.generator)
  predictions = [s['prediction'] for s in got['samples']]
  assert predictions == [f.strip() for f in full]
  from lm.eval import metrics
  refs = [r['reference'] for r in rows]
  assert got['bleu'] == pytest.approx(metrics.bleu(predictions, refs))
  assert got['rougeL'] == pytest.approx(metrics.rouge(predictions, refs)['rougeL'])
  # A prompt longer than max_len is cut from the left, keeping room for the new tokens.
  ids = lm.generator.prompt_ids(' '.join(SENTENCES), max_new_tokens=6)
  assert len(ids) == run.model_def.cfg.max_len - 6
  assert tok.decode(ids) == ' '.join(SENTENCES)[-len(ids):]


# ---- inputs and the command line -----------------------------------------------------------


def test_jsonl_errors_name_the_file_line_and_field(tmp_path):
  path = tmp_path / 'x.jsonl'
  path.write_text('{"source": "a", "reference": "b"}\n\n{"source": "c"}\n')
  with pytest.raises(records.EvalInputError, match=f"{path}:3: no field 'reference'"):
    records.read_jsonl(path, ['source', 'reference'])
  path.write_text('\n  \n')
  with pytest.raises(records.EvalInputError, match='holds no records'):
    records.read_jsonl(path, ['source'])
  path.write_text('{"source": 1\n')
  with pytest.raises(records.EvalInputError, match=f'{path}:1: not valid JSON'):
    records.read_jsonl(path, ['source'])
  with pytest.raises(records.EvalInputError, match='cannot read it'):
    records.read_jsonl(tmp_path / 'missing.jsonl', ['source'])
  with pytest.raises(records.EvalInputError, match="names field 'title'"):
    records.fill('{title}: {text}', {'text': 'x'}, 'f:1')


def _evaluate(env, *args):
  return subprocess.run([sys.executable, '-m', 'lm.evaluate', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one device in the subprocess
  # No network, and Hugging Face datasets' cache in a temp dir rather than ~/.cache.
  env.update(JAX_PLATFORMS='cpu', HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1',
             HF_HOME=str(tmp_path_factory.mktemp('hf_home')), PYTHONPATH=str(REPO))
  return env


def test_cli_rejects_bad_inputs_before_loading_the_model(tiny, env, tmp_path):
  workdir, _ = tiny
  path = tmp_path / 'gen.jsonl'
  path.write_text('{"source": "a", "target": "b"}\n')
  out = _evaluate(env, f'--workdir={workdir}', '--task=generation', f'--jsonl={path}')
  assert out.returncode == 1
  assert f"error: {path}:1: no field 'reference'" in out.stderr
  path.write_text('')
  out = _evaluate(env, f'--workdir={workdir}', '--task=classification', f'--jsonl={path}',
                  '--labels=neg,pos')
  assert out.returncode == 1 and 'holds no records' in out.stderr
  out = _evaluate(env, f'--workdir={workdir}', '--task=perplexity', f'--jsonl={path}')
  assert out.returncode == 1 and '--task=perplexity does not use --jsonl' in out.stderr
  out = _evaluate(env, f'--workdir={tmp_path}', '--task=perplexity')
  assert out.returncode == 1 and 'has no config.json' in out.stderr
  assert not (workdir / 'eval').exists()


def test_cli_lm_eval_on_a_local_task_writes_json_and_markdown(tiny, zero_shot, env, tmp_path):
  """lm_eval.simple_evaluate through the CLI, offline, on a task YAML over a local JSONL:
  its accuracy is our zero-shot classifier's, whose scoring is the same."""
  workdir, _ = tiny
  data = tmp_path / 'reviews.jsonl'
  data.write_text(''.join(json.dumps({'text': t, 'label': int(y == 'pos')}) + '\n'
                          for t, y in REVIEWS))
  task = tmp_path / 'tiny_reviews.yaml'
  task.write_text('\n'.join([
      'task: tiny_reviews', 'dataset_path: json',
      f'dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}',
      'test_split: test', 'output_type: multiple_choice', "doc_to_text: '{{text}}'",
      'doc_to_target: label', 'doc_to_choice: [neg, pos]',
      'metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]', '']))
  out = _evaluate(env, f'--workdir={workdir}', '--task=lm_eval', f'--lm_eval_tasks={task}',
                  '--batch_size=4')
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((workdir / 'eval' / 'lm_eval.json').read_text())
  acc = result['metrics']['results']['tiny_reviews']['acc,none']
  assert acc == pytest.approx(zero_shot['accuracy'])
  assert result['checkpoint']['step'] == 10
  md = (workdir / 'eval' / 'lm_eval.md').read_text()
  assert '| tiny_reviews | acc,none |' in md and md.strip() in out.stdout
