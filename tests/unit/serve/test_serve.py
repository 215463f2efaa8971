"""`python -m lm.serve`: a real server subprocess over real sockets — completions equal the
in-framework greedy decode, streams concatenate to the same text, concurrent requests share
device batches, bad requests get a 4xx naming the field and the server keeps serving."""

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from lm.infer import Decoder, SamplingConfig
from lm.infer.sampling import RowSampling
from lm.serve import protocol
from lm.serve.batcher import Batcher, Failed, Finished, Row, Text, batch_bucket

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
API_KEY = 'test-key-123'
CONTEXT = 48  # the tiny model's max_len: prompt + completion


def _tiny_workdir(tmp: Path) -> Path:
  """A run (lm.run.write_run: config.json, tokenizer/, a step-0 checkpoint) of a tiny
  byte-level model whose weights are scaled up so its greedy choices are far from ties (no
  training needed). Its data was never prepared: serving must not need it."""
  from configs.default import get_config
  from lm import config as config_lib
  from lm.data.tokenizers import ByteTokenizer
  from lm.model import ModelDef
  from lm.run import model_config, write_run

  corpus = tmp / 'corpus.txt'
  corpus.write_text('the quick brown fox jumps over the lazy dog. ' * 20)
  c = get_config()
  c.data.source, c.data.path = 'text', str(corpus)
  c.data.seq_len, c.data.tokenizer.kind = CONTEXT, 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.model.position = 'learned'  # a fixed context: CONTEXT tokens
  c.train.steps = 1
  c = config_lib.resolve(c, num_devices=jax.device_count())
  tokenizer = ByteTokenizer()
  model_def = ModelDef.create(model_config(c, tokenizer.vocab_size))
  params = jax.tree.map(lambda x: x * 4.0, model_def.init_params(jax.random.key(0)))
  write_run(tmp / 'run', c, params, tokenizer)
  corpus.unlink()  # serving reads no data
  return tmp / 'run'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _tiny_workdir(tmp_path_factory.mktemp('serve'))


@pytest.fixture(scope='module')
def model(workdir):
  """(decoder, params, tokenizer) loaded in this process, the way the server loads them."""
  from lm.run import load_run
  run = load_run(workdir)
  return Decoder(run.model_def, cache_len=CONTEXT), run.params, run.tokenizer


def _greedy(model, prompt: str, max_tokens: int) -> str:
  decoder, params, tokenizer = model
  ids = decoder.generate(params, [[tokenizer.bos_id] + tokenizer.encode(prompt)],
                         max_new_tokens=max_tokens,
                         sampling=SamplingConfig(temperature=0.0),
                         stop_tokens=[[tokenizer.eos_id]])[0]
  return tokenizer.decode(ids)


class Server:
  """`python -m lm.serve` as a subprocess on 127.0.0.1 and a free port."""

  def __init__(self, workdir: Path, log: Path, *args: str):
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)  # one device in the subprocess
    env['JAX_PLATFORMS'] = 'cpu'
    env['PYTHONPATH'] = str(REPO)
    env.pop('LM_API_KEY', None)
    self.log = log
    with open(log, 'w') as out:
      self.proc = subprocess.Popen(
          [sys.executable, '-m', 'lm.serve', f'--workdir={workdir}', '--port=0', *args],
          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # start-up compiles; a busy CI machine is slow
    self.port = None
    while self.port is None:
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise AssertionError(f'server did not start:\n{log.read_text()[-3000:]}')
      if m := re.search(r'at http://127\.0\.0\.1:(\d+) ', log.read_text()):
        self.port = int(m.group(1))
      time.sleep(0.1)
    while self.request('GET', '/healthz')[0] != 200:
      time.sleep(0.1)

  def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    """(status, parsed JSON or text, headers) of one request over a fresh connection."""
    conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    try:
      data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
      conn.request(method, path, body=data,
                   headers={'Content-Type': 'application/json', **(headers or {})})
      resp = conn.getresponse()
      text = resp.read().decode()
      is_json = resp.getheader('content-type', '').startswith('application/json')
      return resp.status, json.loads(text) if is_json else text, dict(resp.getheaders())
    finally:
      conn.close()

  def stop(self) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(2)  # SIGINT, as Ctrl-C
      try:
        self.proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    return self.proc.returncode


@pytest.fixture(scope='module')
def server(workdir, tmp_path_factory):
  s = Server(workdir, tmp_path_factory.mktemp('log') / 'server.log', f'--api_key={API_KEY}',
             '--max_batch=8', '--batch_wait_ms=200')
  yield s
  code = s.stop()
  assert code == 0, s.log.read_text()[-3000:]  # Ctrl-C shuts down cleanly
  assert 'lm.serve: stopped' in s.log.read_text()


AUTH = {'Authorization': f'Bearer {API_KEY}'}


def _complete(server, body, headers=AUTH):
  return server.request('POST', '/v1/completions', body, headers)


def _metric(text: str, name: str, **labels) -> float:
  """The value of one Prometheus sample (0 when absent)."""
  want = ','.join(f'{k}="{v}"' for k, v in labels.items())
  pattern = rf'^{re.escape(name)}' + (rf'\{{{re.escape(want)}\}}' if labels else '') + r' (\S+)$'
  m = re.search(pattern, text, re.M)
  return float(m.group(1)) if m else 0.0


def test_greedy_completion_equals_the_in_framework_decode(server, model):
  status, out, _ = _complete(server, {'prompt': 'the quick', 'max_tokens': 12,
                                      'temperature': 0, 'model': 'anything'})
  assert status == 200, out
  want = _greedy(model, 'the quick', 12)
  assert out['object'] == 'text_completion' and out['id'].startswith('cmpl-')
  assert out['model'] == 'run' and isinstance(out['created'], int)
  [choice] = out['choices']
  assert choice['text'] == want and choice['index'] == 0 and choice['finish_reason'] == 'length'
  assert out['usage'] == {'prompt_tokens': 9, 'completion_tokens': 12, 'total_tokens': 21}

  # A stop string cuts the text before it, with finish_reason 'stop'.
  stop = want[3:5]
  status, out, _ = _complete(server, {'prompt': 'the quick', 'max_tokens': 12,
                                      'temperature': 0, 'stop': [stop, 'zzzz']})
  assert status == 200, out
  assert out['choices'][0] == {'text': want[:want.find(stop)], 'index': 0, 'logprobs': None,
                               'finish_reason': 'stop'}

  # A list of prompts: one choice each, in order.
  prompts = ['over the', 'lazy dog', 'x']
  status, out, _ = _complete(server, {'prompt': prompts, 'max_tokens': 6, 'temperature': 0})
  assert status == 200, out
  assert [c['text'] for c in out['choices']] == [_greedy(model, p, 6) for p in prompts]
  assert [c['index'] for c in out['choices']] == [0, 1, 2]


def test_seeded_sampling_repeats_and_seeds_differ(server):
  def sampled(seed):
    body = {'prompt': 'fox', 'max_tokens': 20, 'temperature': 1.5, 'top_k': 50, 'seed': seed}
    status, out, _ = _complete(server, body)
    assert status == 200, out
    return out['choices'][0]['text']

  first = sampled(7)
  assert sampled(7) == first
  assert sampled(8) != first


def _stream(server, body):
  """The parsed `data:` events of a streamed completion (the last one is '[DONE]')."""
  conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=60)
  try:
    conn.request('POST', '/v1/completions', json.dumps({**body, 'stream': True}), AUTH)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader('content-type').startswith('text/event-stream')
    raw = resp.read().decode()
  finally:
    conn.close()
  assert raw.endswith('\n\n')
  events = []
  for block in raw.split('\n\n')[:-1]:
    assert block.startswith('data: '), block
    payload = block[len('data: '):]
    events.append(payload if payload == '[DONE]' else json.loads(payload))
  return events


def test_streamed_chunks_concatenate_to_the_completion(server):
  body = {'prompt': ['the lazy', 'brown'], 'max_tokens': 15, 'temperature': 0}
  status, out, _ = _complete(server, body)
  assert status == 200, out
  events = _stream(server, body)
  assert events[-1] == '[DONE]'
  chunks = events[:-1]
  assert len(chunks) > 4  # token by token, not one piece
  for i, choice in enumerate(out['choices']):
    mine = [c['choices'][0] for c in chunks if c['choices'][0]['index'] == i]
    assert ''.join(c['text'] for c in mine) == choice['text']
    reasons = [c['finish_reason'] for c in mine]
    assert reasons == [None] * (len(mine) - 1) + [choice['finish_reason']]
    assert all(c['object'] == 'text_completion' for c in chunks)


def test_concurrent_requests_are_batched_and_all_correct(server, model):
  words = 'the quick brown fox jumps over the lazy dog'.split()
  prompts = [f'{words[i % 9]} {words[(i * 4) % 9]}'[:4 + i % 7] for i in range(20)]
  before = server.request('GET', '/metrics', headers=AUTH)[1]

  def one(prompt):
    return _complete(server, {'prompt': prompt, 'max_tokens': 8, 'temperature': 0})

  with concurrent.futures.ThreadPoolExecutor(20) as pool:
    results = list(pool.map(one, prompts))
  for prompt, (status, out, _) in zip(prompts, results, strict=True):
    assert status == 200, out
    assert out['choices'][0]['text'] == _greedy(model, prompt, 8), prompt

  after = server.request('GET', '/metrics', headers=AUTH)[1]
  batches = (_metric(after, 'lm_serve_batch_size_count')
             - _metric(before, 'lm_serve_batch_size_count'))
  rows = _metric(after, 'lm_serve_batch_size_sum') - _metric(before, 'lm_serve_batch_size_sum')
  assert rows / batches > 1.5  # a decode dispatch ran for several requests at once
  singles = (_metric(after, 'lm_serve_batch_size_bucket', le='1.0')
             - _metric(before, 'lm_serve_batch_size_bucket', le='1.0'))
  assert singles < batches


BAD_REQUESTS = [  # (raw body, status, the field the error names, words of the message)
    (b'{"prompt": "hi", "max_tokens": ', 400, None, 'not valid JSON'),
    (b'', 400, None, 'body is empty'),
    (b'["hi"]', 400, None, 'must be a JSON object'),
    (b'{"max_tokens": 4}', 400, 'prompt', 'prompt is required'),
    (b'{"prompt": ""}', 400, 'prompt', 'prompt is empty'),
    (b'{"prompt": []}', 400, 'prompt', 'empty list'),
    (b'{"prompt": [1, "a"]}', 400, 'prompt', 'must be a token id'),
    (b'{"prompt": ["a", [1]]}', 400, 'prompt', 'must be a string'),
    (b'{"prompt": [[5, 99999]]}', 400, 'prompt', 'outside the vocabulary'),
    (b'{"prompt": "hi", "max_tokens": 0}', 400, 'max_tokens', '0 only with echo'),
    (b'{"prompt": "hi", "echo": 1}', 400, 'echo', 'true or false'),
    (b'{"prompt": "hi", "best_of": 2}', 400, 'best_of', 'not supported'),
    (b'{"prompt": "hi", "max_tokens": "8"}', 400, 'max_tokens', 'must be an integer'),
    (b'{"prompt": "hi", "max_tokens": -1}', 400, 'max_tokens', 'out of range'),
    (b'{"prompt": "hi", "max_tokens": 1000000000}', 400, 'max_tokens', 'out of range'),
    (b'{"prompt": "hi", "max_tokens": 47}', 400, 'max_tokens', 'at most 45 tokens'),
    (json.dumps({'prompt': 'x' * 60}).encode(), 400, 'prompt', 'shorten it'),
    (b'{"prompt": "hi", "temperature": -0.5}', 400, 'temperature', 'out of range'),
    (b'{"prompt": "hi", "temperature": "hot"}', 400, 'temperature', 'must be a number'),
    (b'{"prompt": "hi", "top_p": 0}', 400, 'top_p', 'out of range'),
    (b'{"prompt": "hi", "stream": "yes"}', 400, 'stream', 'true or false'),
    (b'{"prompt": "hi", "stream_options": {"include_usage": true}}', 400, 'stream_options',
     'only with "stream": true'),
    (b'{"prompt": "hi", "stream": true, "stream_options": {"x": 1}}', 400, 'stream_options',
     'the one field include_usage'),
    (b'{"prompt": "hi", "stop": [""]}', 400, 'stop', 'empty string'),
    (b'{"prompt": "hi", "n": 17}', 400, 'n', 'out of range'),
    (b'{"prompt": "hi", "seed": -3}', 400, 'seed', 'out of range'),
    (b'{"prompt": "hi", "frobnicate": 1}', 400, 'frobnicate', 'unknown field'),
    (b'{"prompt": "hi", "logprobs": 6}', 400, 'logprobs', 'out of range'),
    (b'{"prompt": "hi", "temperature": 1' + b'0' * 400 + b'}', 400, 'temperature', 'range'),
    (b'{"prompt": "a\\ud800b"}', 400, 'prompt', 'lone UTF-16 surrogate'),
    (b'{"prompt": ["ok", "\\udfff"]}', 400, 'prompt', 'prompt[1] holds'),
    (b'{"prompt": "hi", "stop": "\\ud800"}', 400, 'stop', 'lone UTF-16 surrogate'),
    (b'{"prompt": ' + b'[' * 50000 + b']' * 50000 + b'}', 400, 'prompt', 'too deeply'),
    (b'{"prompt": "hi", "user": ' + b'{"a": ' * 30000 + b'1' + b'}' * 30001, 400, 'user',
     'too deeply'),
    (b'[' * 100000 + b']' * 100000, 400, None, 'too deeply'),
    (json.dumps({'prompt': ['x'] * 40, 'user': 'y' * (1 << 20)}).encode(), 413, None,
     'send a smaller one'),
]


def test_malformed_requests_get_a_4xx_naming_the_field_and_serving_goes_on(server):
  before = server.request('GET', '/metrics', headers=AUTH)[1]
  for raw, status, param, words in BAD_REQUESTS:
    got, out, _ = server.request('POST', '/v1/completions', raw=raw, headers=AUTH)
    assert got == status, (raw, out)
    error = out['error']
    assert error['type'] == 'invalid_request_error' and error['param'] == param, (raw, error)
    assert words in error['message'], (raw, error)
    ok, good, _ = _complete(server, {'prompt': 'ok', 'max_tokens': 2})
    assert ok == 200 and good['usage']['completion_tokens'] == 2
  status, out, _ = server.request('GET', '/v2/nothing', headers=AUTH)
  assert status == 404 and 'POST /v1/completions' in out['error']['message']

  after = server.request('GET', '/metrics', headers=AUTH)[1]
  path = '/v1/completions'
  for code in ('400', '413'):
    assert (_metric(after, 'lm_serve_requests_total', path=path, status=code)
            - _metric(before, 'lm_serve_requests_total', path=path, status=code)
            == sum(str(status) == code for _, status, _, _ in BAD_REQUESTS))
  assert _metric(after, 'lm_serve_requests_total', path='other', status='404') == 1
  assert (_metric(after, 'lm_serve_requests_total', path=path, status='200')
          - _metric(before, 'lm_serve_requests_total', path=path, status='200')
          == len(BAD_REQUESTS))
  assert (_metric(after, 'lm_serve_errors_total', kind='invalid_request')
          - _metric(before, 'lm_serve_errors_total', kind='invalid_request')
          == len(BAD_REQUESTS) + 1)  # and the 404
  assert (_metric(after, 'lm_serve_generated_tokens_total')
          - _metric(before, 'lm_serve_generated_tokens_total') == 2 * len(BAD_REQUESTS))
  assert _metric(after, 'lm_serve_request_latency_seconds_count') > 0
  assert _metric(after, 'lm_serve_tokens_per_second') > 0


def test_api_key_is_required_except_for_healthz(server):
  body = {'prompt': 'hi', 'max_tokens': 2}
  for headers in ({}, {'Authorization': 'Bearer wrong'}, {'Authorization': API_KEY}):
    status, out, got_headers = _complete(server, body, headers)
    assert status == 401, out
    assert out['error']['code'] == 'invalid_api_key' and 'Authorization: Bearer' in (
        out['error']['message'])
    assert got_headers.get('www-authenticate') == 'Bearer'
  assert server.request('GET', '/metrics')[0] == 401
  assert server.request('GET', '/healthz')[1] == {'status': 'ok', 'model': 'run', 'step': 0}
  assert _complete(server, body)[0] == 200
  metrics = server.request('GET', '/metrics', headers=AUTH)[1]
  assert _metric(metrics, 'lm_serve_errors_total', kind='authentication') >= 3


# ---- the batcher in-process -----------------------------------------------------------------


def test_rows_with_their_own_settings_sample_as_if_alone(model):
  """RowSampling: a greedy row and a seeded hot row in one batch give the tokens each gives
  alone."""
  decoder, params, _ = model
  prompts = [[10, 20, 30], [40, 50]]
  hot = SamplingConfig(temperature=1.5, top_k=40)
  both = decoder.generate(params, prompts, max_new_tokens=10,
                          sampling=RowSampling((SamplingConfig(temperature=0.0), hot), (0, 9)))
  alone_greedy = decoder.generate(params, prompts[:1], max_new_tokens=10,
                                  sampling=SamplingConfig(temperature=0.0))
  alone_hot = decoder.generate(params, prompts[1:], max_new_tokens=10,
                               sampling=RowSampling((hot,), (9,)))
  other_seed = decoder.generate(params, prompts[1:], max_new_tokens=10,
                                sampling=RowSampling((hot,), (10,)))
  assert both == alone_greedy + alone_hot
  assert other_seed != alone_hot


def test_batcher_reports_a_generation_error_and_runs_the_next_batch(model):
  """A batch whose decode raises fails its rows with the message; the next batch runs."""
  decoder, params, tokenizer = model
  batcher = Batcher(decoder, params, tokenizer, max_batch=4, batch_wait_s=0.0)
  events: list = []
  done = concurrent.futures.Future

  def submit(prompt_ids):
    future = done()

    def on_event(event):
      events.append(event)
      if isinstance(event, Finished | Failed):
        future.set_result(event)
    batcher.submit([Row(prompt_ids, 5, SamplingConfig(temperature=0.0), 0, (), on_event)])
    return future.result(timeout=60)

  batcher.start()
  try:
    bad = submit([tokenizer.vocab_size + 5])  # an id outside the vocabulary: decode raises
    assert isinstance(bad, Failed) and 'outside' in bad.message
    good = submit([tokenizer.bos_id] + tokenizer.encode('the'))
    assert isinstance(good, Finished) and good.completion_tokens == 5
    text = ''.join(e.text for e in events if isinstance(e, Text | Finished))
    assert text == _greedy(model, 'the', 5)
  finally:
    batcher.stop()


def test_stream_holds_back_a_possible_stop_string(model):
  """No streamed piece ever holds the start of a stop string that then completes."""
  _, _, tokenizer = model
  full = _greedy(model, 'the quick', 20)
  stop = full[6:9]
  pieces: list = []
  decoder, params, _ = model
  batcher = Batcher(decoder, params, tokenizer, max_batch=2, batch_wait_s=0.0)
  finished = concurrent.futures.Future()

  def on_event(event):
    pieces.append(event)
    if isinstance(event, Finished | Failed):
      finished.set_result(event)
  batcher.start()
  try:
    ids = [tokenizer.bos_id] + tokenizer.encode('the quick')
    batcher.submit([Row(ids, 20, SamplingConfig(temperature=0.0), 0, (stop,), on_event)])
    end = finished.result(timeout=60)
  finally:
    batcher.stop()
  assert isinstance(end, Finished) and end.finish_reason == 'stop'
  assert ''.join(p.text for p in pieces) == full[:full.find(stop)]


def test_batch_buckets_and_protocol_bounds():
  assert [batch_bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
  assert batch_bucket(5, 6) == 6
  req = protocol.parse_completion_request(b'{"prompt": "a", "stop": "x", "top_k": null}')
  assert req.stop == ('x',) and req.top_k == 0 and req.max_tokens == 16
  assert req.temperature == 1.0 and not req.stream and req.seed is None
  with pytest.raises(protocol.RequestError, match='at most 46 tokens') as e:
    protocol.check_context([[1, 2]], 47, 48)
  assert e.value.param == 'max_tokens'
  protocol.check_context([[1, 2]], 46, 48)


def test_an_error_inside_generation_is_a_500_and_the_next_request_succeeds(model):
  """The app in-process (TestClient): parameters that cannot run make the decode raise; the
  request gets a 500 naming the error, /healthz stays up, and with the parameters back the
  next request is answered."""
  from fastapi.testclient import TestClient

  from lm.serve.app import Service, create_app
  from lm.serve.metrics import ServeMetrics

  decoder, params, tokenizer = model
  metrics = ServeMetrics()
  batcher = Batcher(decoder, params, tokenizer, max_batch=2, batch_wait_s=0.0, metrics=metrics)
  service = Service(batcher=batcher, tokenizer=tokenizer, context=CONTEXT, model_name='tiny',
                    step=0, metrics=metrics)
  body = {'prompt': 'the', 'max_tokens': 5, 'temperature': 0}
  batcher.start()
  try:
    with TestClient(create_app(service)) as client:
      batcher.params = {'not': 'the model'}
      r = client.post('/v1/completions', json=body)
      assert r.status_code == 500
      assert r.json()['error']['type'] == 'server_error'
      assert r.json()['error']['message'].startswith('generation failed: ')
      streamed = client.post('/v1/completions', json={**body, 'stream': True}).text
      assert streamed.startswith('data: {"error": {"message": "generation failed: ')
      assert '[DONE]' not in streamed
      assert client.get('/healthz').status_code == 200
      batcher.params = params
      r = client.post('/v1/completions', json=body)
      assert r.status_code == 200 and r.json()['choices'][0]['text'] == _greedy(model, 'the', 5)
      assert 'lm_serve_errors_total{kind="generation"} 2.0' in client.get('/metrics').text
  finally:
    batcher.stop()


def test_the_load_generator_reports_throughput_and_batching(server, capsys):
  from lm.serve import bench
  bench.main([f'--url=http://127.0.0.1:{server.port}', '--requests=6', '--concurrency=3',
              '--max_tokens=3', f'--api_key={API_KEY}'])
  out = capsys.readouterr().out
  assert out.startswith('6 requests, concurrency 3, max_tokens 3: ')
  assert 'generated tokens/s' in out and float(re.search(r'mean batch (\S+)', out)[1]) >= 1


def test_the_open_loop_load_generator_counts_add_up_and_hits_the_prefix_cache(server):
  """`python -m lm bench_serve`'s library against the module's server: 5 Poisson arrivals
  sharing a 34-token prefix (one 32-token block: the first request stores it, the other
  four reuse it); the report's counts equal the server's own."""
  from lm.serve import loadgen

  client = loadgen.Client(f'http://127.0.0.1:{server.port}', API_KEY)
  load = loadgen.Load(rate=20.0, requests=5, prompt_tokens=(1, 4), max_tokens=(1, 4),
                      shared_prefix=34, seed=3)
  before = server.request('GET', '/metrics', headers=AUTH)[1]
  report = loadgen.run(client, load, warmup=0)
  after = server.request('GET', '/metrics', headers=AUTH)[1]

  def delta(name):
    return _metric(after, name) - _metric(before, name)

  assert (report['requests'], report['completed'], report['failed']) == (5, 5, 0), report
  per = report['per_request']
  info = client.get_json('/tokenizer_info')
  planned = loadgen.plan(load, info['vocab_size'], (info['bos_token_id'], info['eos_token_id']))
  assert report['completion_tokens'] == sum(r['completion_tokens'] for r in per)
  assert report['completion_tokens'] == delta('lm_serve_generated_tokens_total')
  assert report['prompt_tokens'] == delta('lm_serve_prompt_tokens_total')
  for r, p in zip(per, planned, strict=True):
    assert 1 <= r['completion_tokens'] <= p.max_tokens
    assert r['prompt_tokens'] >= len(p.prompt) and 0 < r['ttft_s'] <= r['latency_s']
  assert report['ttft_s']['p50'] <= report['ttft_s']['p99'] <= report['duration_s']
  assert report['output_tokens_per_s'] == report['completion_tokens'] / report['duration_s']
  assert (delta('lm_serve_prefix_cache_hits_total'),
          delta('lm_serve_prefix_cache_misses_total')) == (4, 1)
  assert '| TTFT p50 / p99 / mean |' in loadgen.table(report)
