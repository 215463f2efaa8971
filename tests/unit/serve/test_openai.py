"""Clients people use against a real `python -m lm.serve` on 127.0.0.1 (one process for
the module): the official `openai` client (completions, chat, streamed or not, logprobs
and echo equal to an in-process forward pass), lm-evaluation-harness's own
`local-completions` model (its numbers equal those of the in-process `lm-jax` adapter),
the tokenizer endpoints and /openapi.json, and SIGTERM draining a request in flight."""

import json
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
from test_serve import CONTEXT, Server, _greedy, _tiny_workdir

from lm.infer import Decoder
from lm.serve import chat


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _tiny_workdir(tmp_path_factory.mktemp('openai'))


@pytest.fixture(scope='module')
def run(workdir):
  from lm.run import load_run
  return load_run(workdir)


@pytest.fixture(scope='module')
def model(run):
  return Decoder(run.model_def, cache_len=CONTEXT), run.params, run.tokenizer


@pytest.fixture(scope='module')
def server(workdir, tmp_path_factory):
  s = Server(workdir, tmp_path_factory.mktemp('log') / 'server.log', '--max_batch=4',
             '--prefill_chunk=16', '--model_name=tiny')
  yield s
  s.stop()


@pytest.fixture(scope='module')
def client(server):
  return openai.OpenAI(base_url=f'http://127.0.0.1:{server.port}/v1', api_key='none',
                       max_retries=0, timeout=120)


def _logp(run, ids):
  """log_softmax of an in-process forward pass over ids: [len(ids), V]."""
  logits = run.model_def.merge(run.params)(jnp.asarray([ids]))
  logits = logits[0] if isinstance(logits, tuple) else logits
  return np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))


def test_completions_and_their_streams(client, model):
  out = client.completions.create(model='tiny', prompt=['the quick', 'lazy'], max_tokens=10,
                                  temperature=0)
  assert [c.text for c in out.choices] == [_greedy(model, p, 10) for p in ('the quick', 'lazy')]
  assert out.usage.prompt_tokens == len('the quick') + len('lazy')
  assert 2 <= out.usage.completion_tokens <= 20
  assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
  pieces = {0: '', 1: ''}
  chunks = list(client.completions.create(model='tiny', prompt=['the quick', 'lazy'],
                                          max_tokens=10, temperature=0, stream=True,
                                          stream_options={'include_usage': True}))
  for chunk in chunks[:-1]:
    pieces[chunk.choices[0].index] += chunk.choices[0].text
  assert [pieces[0], pieces[1]] == [c.text for c in out.choices]
  assert chunks[-1].choices == [] and chunks[-1].usage == out.usage  # include_usage
  seeded = [client.completions.create(model='tiny', prompt='the', max_tokens=8, n=2, seed=5)
            for _ in range(2)]
  texts = [[c.text for c in s.choices] for s in seeded]
  assert texts[0] == texts[1] and texts[0][0] != texts[0][1]  # choice j draws with seed + j


def test_chat_and_its_stream_use_the_sft_template(client, model):
  system = [{'role': 'system', 'content': 'be brief'}]
  assert chat.render(system) == '<|system|>\nbe brief\n<|assistant|>\n'
  messages = [{'role': 'user', 'content': 'fox?'}]  # the tiny model's context is 48 tokens
  prompt = chat.render(messages)
  assert prompt == '<|user|>\nfox?\n<|assistant|>\n'
  want = _greedy(model, prompt, 12)
  want = want[:want.find('<|end|>')] if '<|end|>' in want else want
  out = client.chat.completions.create(model='tiny', messages=messages, max_tokens=12,
                                       temperature=0)
  assert out.choices[0].message.content == want and out.choices[0].message.role == 'assistant'
  streamed = ''.join(c.choices[0].delta.content or '' for c in client.chat.completions.create(
      model='tiny', messages=messages, max_tokens=12, temperature=0, stream=True))
  assert streamed == want
  with pytest.raises(openai.BadRequestError, match="'tools' is not supported"):
    client.chat.completions.create(model='tiny', messages=messages, tools=[
        {'type': 'function', 'function': {'name': 'f', 'parameters': {}}}])
  import jinja2  # the template /tokenizer_info publishes renders the same text
  assert jinja2.Template(chat.CHAT_TEMPLATE).render(
      messages=system + messages + [{'role': 'assistant', 'content': 'ok'}],
      add_generation_prompt=False) == chat.render(system + messages + [
          {'role': 'assistant', 'content': 'ok'}], False)


def test_logprobs_and_echo_equal_in_process_scoring(client, run):
  tok = run.tokenizer
  text = 'the lazy dog jumps over the quick brown fox'  # longer than a prefill chunk
  out = client.completions.create(model='tiny', prompt=text, max_tokens=2, temperature=0,
                                  echo=True, logprobs=3)
  choice = out.choices[0]
  assert choice.text.startswith(text)
  lp = choice.logprobs
  ids = [tok.bos_id] + tok.encode(text)
  generated = [int(t[len('token_id:'):]) if t.startswith('token_id:') else tok.encode(t)[0]
               for t in lp.tokens[len(ids) - 1:]]  # (the text of a lone byte is U+FFFD)
  assert len(generated) == 2
  full = ids + generated
  logp = _logp(run, full)
  assert len(lp.token_logprobs) == len(full) - 1 == len(lp.top_logprobs)
  want = [logp[j - 1, full[j]] for j in range(1, len(full))]
  np.testing.assert_allclose(lp.token_logprobs, want, atol=1e-5)
  for j, top in enumerate(lp.top_logprobs, start=1):
    best = np.sort(logp[j - 1])[::-1][:3]
    np.testing.assert_allclose(sorted(top.values(), reverse=True)[0], best[0], atol=1e-5)
  assert lp.text_offset[0] == 0 and lp.tokens[:3] == ['t', 'h', 'e']
  # max_tokens 0 with echo: the prompt's scores alone
  zero = client.completions.create(model='tiny', prompt=text, max_tokens=0, echo=True,
                                   logprobs=0)
  assert zero.choices[0].text == text and zero.usage.completion_tokens == 0
  np.testing.assert_allclose(zero.choices[0].logprobs.token_logprobs, want[:len(ids) - 1],
                             atol=1e-5)


def test_tokenizer_endpoints_and_openapi(server, run):
  tok = run.tokenizer
  status, out, _ = server.request('POST', '/tokenize', {'prompt': 'hi'})
  assert status == 200 and out['tokens'] == [tok.bos_id] + tok.encode('hi')
  assert out['count'] == 3 and out['max_model_len'] == CONTEXT
  status, out, _ = server.request('POST', '/tokenize', {'prompt': 'hi',
                                                       'add_special_tokens': False})
  assert out['tokens'] == tok.encode('hi')
  status, out, _ = server.request('POST', '/detokenize', {'tokens': tok.encode('hé')})
  assert status == 200 and out['prompt'] == 'hé'
  status, out, _ = server.request('POST', '/detokenize', {'tokens': [10 ** 6]})
  assert status == 400 and out['error']['param'] == 'tokens'
  status, info, _ = server.request('GET', '/tokenizer_info')
  assert status == 200 and info['eos_token_id'] == tok.eos_id and 'eos_token' in info
  status, schema, _ = server.request('GET', '/openapi.json')
  assert status == 200
  for path in ('/v1/completions', '/v1/chat/completions', '/tokenize', '/detokenize'):
    assert path in schema['paths']
  request = schema['components']['schemas']['CompletionRequest']['properties']
  assert {'prompt', 'logprobs', 'echo', 'n', 'seed'} <= set(request)
  assert 'CompletionResponse' in schema['components']['schemas']


def _tasks(tmp_path):
  mc = tmp_path / 'mc.jsonl'
  mc.write_text(''.join(json.dumps(r) + '\n' for r in [
      {'text': 'the quick brown', 'label': 0}, {'text': 'a lazy', 'label': 1},
      {'text': 'over the', 'label': 1}, {'text': 'jumps', 'label': 0}]))
  gen = tmp_path / 'gen.jsonl'
  gen.write_text(''.join(json.dumps(r) + '\n' for r in [
      {'q': 'the quick', 'a': ' brown'}, {'q': 'lazy', 'a': ' dog'}, {'q': 'fox', 'a': 'x'}]))
  paths = []
  for name, lines in [
      ('tiny_mc', ['output_type: multiple_choice', "doc_to_text: '{{text}}'",
                   'doc_to_target: label', "doc_to_choice: [' fox', ' dog']",
                   'metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]'],
       ),
      ('tiny_gen', ['output_type: generate_until', "doc_to_text: '{{q}}'",
                    "doc_to_target: '{{a}}'",
                    "generation_kwargs: {until: ['.'], max_gen_toks: 6, do_sample: false}",
                    'metric_list: [{metric: exact_match, aggregation: mean, '
                    'higher_is_better: true}]'])]:
    data = mc if name == 'tiny_mc' else gen
    path = tmp_path / f'{name}.yaml'
    path.write_text('\n'.join([f'task: {name}', 'dataset_path: json',
                               f'dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}',
                               'test_split: test', *lines, '']))
    paths.append(str(path))
  return paths


def test_lm_eval_local_completions_equals_the_in_process_adapter(server, run, tmp_path,
                                                                monkeypatch):
  import lm_eval
  import lm_eval.models.openai_completions  # noqa: F401 - registers local-completions

  from lm.eval.harness import LmJax, task_manager
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
  tasks = _tasks(tmp_path)

  def evaluate(model, model_args=None):
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                  task_manager=task_manager(tasks), log_samples=True,
                                  batch_size=1)
    return out['results'], {t: [s['resps'] for s in out['samples'][t]] for t in out['samples']}

  remote = evaluate('local-completions', f'base_url=http://127.0.0.1:{server.port}/v1/'
                    f'completions,model=tiny,tokenizer_backend=remote,max_length={CONTEXT},'
                    'num_concurrent=1,max_retries=1')
  local = evaluate(LmJax(run=run, batch_size=4))
  for task, metric in (('tiny_mc', 'acc,none'), ('tiny_gen', 'exact_match,none')):
    assert remote[0][task][metric] == local[0][task][metric], task
  gen_remote, gen_local = remote[1]['tiny_gen'], local[1]['tiny_gen']
  assert gen_remote == gen_local and any(r[0][0] for r in gen_local)
  for a, b in zip(remote[1]['tiny_mc'], local[1]['tiny_mc'], strict=True):
    for (lp_a, greedy_a), (lp_b, greedy_b) in zip([x[0] for x in a], [x[0] for x in b],
                                                  strict=True):
      assert lp_a == pytest.approx(lp_b, abs=1e-4) and greedy_a == greedy_b


def test_sigterm_drains_a_request_in_flight_then_exits(server, client):
  """Runs last: the module's server is gone after it."""
  got, started = [], threading.Event()

  def stream():
    for chunk in client.completions.create(model='tiny', prompt='the', max_tokens=40,
                                           temperature=0, stream=True):
      got.append(chunk.choices[0])
      started.set()

  thread = threading.Thread(target=stream)
  thread.start()
  assert started.wait(60)
  server.proc.send_signal(signal.SIGTERM)
  thread.join(60)
  assert not thread.is_alive() and got[-1].finish_reason is not None
  assert server.proc.wait(60) == 0
  assert 'lm.serve: stopped' in server.log.read_text()
