"""The continuous-batching engine in-process: each request of a mixed stream (different
lengths and settings, some cancelled mid-way, some streamed) gets exactly the tokens it
gets alone, and equal to Decoder.generate; a short request overtakes a long one."""

import queue
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.infer import Decoder, SamplingConfig
from lm.infer.sampling import RowSampling
from lm.infer.slots import SlotDecoder
from lm.serve.batcher import Failed, Finished, Prompt, Row, Text
from lm.serve.engine import Engine

CONTEXT = 48


@pytest.fixture(scope='module')
def tiny():
  """(model_def, params, tokenizer): a 1-layer byte model, weights scaled away from ties."""
  from configs.default import get_config
  from lm import config as config_lib
  from lm.data.tokenizers import ByteTokenizer
  from lm.model import ModelDef
  from lm.run import model_config

  c = get_config()
  c.data.seq_len, c.data.tokenizer.kind = CONTEXT, 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.model.position = 'learned'
  c = config_lib.resolve(c, num_devices=jax.device_count())
  tokenizer = ByteTokenizer()
  model_def = ModelDef.create(model_config(c, tokenizer.vocab_size))
  params = jax.tree.map(lambda x: x * 4.0, model_def.init_params(jax.random.key(0)))
  return model_def, params, tokenizer


class Collector:
  """A row's events, in order, and when it finished."""

  def __init__(self):
    self.events, self.finished_at, self.done = [], None, threading.Event()
    self.cancel_row = None  # a Row to cancel at its first piece of text
    self.on_first = None  # called at the first event

  def __call__(self, event):
    self.events.append(event)
    if self.on_first is not None and len(self.events) == 1:
      self.on_first()
    if self.cancel_row is not None and isinstance(event, Text):
      self.cancel_row.cancelled = True
    if isinstance(event, Finished | Failed):
      self.finished_at = time.monotonic()
      self.done.set()

  def text(self):
    return ''.join(e.text for e in self.events if isinstance(e, Text | Finished))


@pytest.fixture(scope='module')
def slot_decoder(tiny):
  """One SlotDecoder for every test: its jit'd functions compile once."""
  model_def, _, tokenizer = tiny
  return SlotDecoder(Decoder(model_def, cache_len=CONTEXT), slots=3, eos_id=tokenizer.eos_id,
                     chunk=8)


def _engine(tiny, slot_decoder, steps=4):
  _, params, tokenizer = tiny
  return Engine(slot_decoder, params, tokenizer, steps_per_call=steps)


def _rows(tokenizer):
  greedy, hot = SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, top_k=20)
  specs = [('the quick brown fox jumps over', 12, greedy, 0),
           ('a', 30, hot, 11), ('lazy dog', 5, hot, 3),
           ('over the lazy dog and the quick fox', 9, greedy, 0),
           ('q', 25, greedy, 0), ('brown', 17, hot, 5)]
  return [(tokenizer.encode(p), n, s, seed) for p, n, s, seed in specs]


def _run(engine, specs, cancel=()):
  """Submits rows (staggered); those in `cancel` are cancelled at their first text (from
  the engine's thread, so mid-way for certain), the way a client that hangs up is."""
  collectors = [Collector() for _ in specs]
  rows = [Row(ids, n, s, seed, (), c) for (ids, n, s, seed), c in zip(specs, collectors,
                                                                         strict=True)]
  for i in cancel:
    collectors[i].cancel_row = rows[i]
  for i, row in enumerate(rows):
    engine.submit([row])
    if i % 2:
      time.sleep(0.05)
  for i, c in enumerate(collectors):
    if i not in cancel:
      assert c.done.wait(120), f'row {i} did not finish'
  deadline = time.monotonic() + 30
  while engine.busy() and time.monotonic() < deadline:
    time.sleep(0.01)
  return collectors


def test_a_mixed_stream_gives_every_row_its_tokens_alone(tiny, slot_decoder):
  model_def, params, tokenizer = tiny
  specs = _rows(tokenizer)
  engine = _engine(tiny, slot_decoder)
  engine.warm_up()
  engine.start()
  try:
    alone = [_run(engine, [spec])[0].text() for spec in specs]
    mixed = _run(engine, specs, cancel=(1, 4))
    # a cancelled row's slot is free again: everything still runs afterwards
    again = _run(engine, specs[:2])
  finally:
    engine.stop()
  decoder = Decoder(model_def, cache_len=CONTEXT)
  for i, (ids, n, s, seed) in enumerate(specs):
    ref = decoder.generate(params, [ids], max_new_tokens=n, sampling=RowSampling((s,), (seed,)),
                           stop_tokens=[[tokenizer.eos_id]])[0]
    assert alone[i] == tokenizer.decode(ref), i
    if i in (1, 4):  # cancelled mid-way: what it got is a prefix, and it never finished
      assert mixed[i].text() and alone[i].startswith(mixed[i].text()), i
      assert mixed[i].finished_at is None and len(mixed[i].text()) < len(alone[i]), i
    else:
      assert mixed[i].text() == alone[i], i
  assert [c.text() for c in again] == alone[:2]
  assert engine.busy() == 0


def test_a_short_request_finishes_before_a_long_one_started_earlier(tiny, slot_decoder):
  _, _, tokenizer = tiny
  engine = _engine(tiny, slot_decoder)
  engine.warm_up()
  engine.start()
  try:
    long_c, short_c = Collector(), Collector()
    short = Row(tokenizer.encode('fox'), 2, SamplingConfig(temperature=0.0), 0, (), short_c)
    # Sent from the engine's thread at the long row's first event, so that it arrives while
    # the long one decodes however fast decoding is (a sleeping poll here could miss it).
    long_c.on_first = lambda: engine.submit([short])
    engine.submit([Row(tokenizer.encode('the'), 40, SamplingConfig(temperature=0.0), 0, (),
                       long_c)])
    assert short_c.done.wait(60) and long_c.done.wait(120)
  finally:
    engine.stop()
  assert short_c.finished_at < long_c.finished_at
  assert isinstance(long_c.events[-1], Finished) and long_c.events[-1].completion_tokens > 2


def test_echo_scores_equal_a_full_forward_and_max_tokens_0(tiny, slot_decoder):
  model_def, params, tokenizer = tiny
  engine = _engine(tiny, slot_decoder)
  engine.start()
  ids = [tokenizer.bos_id] + tokenizer.encode('the quick brown fox jumps')
  got = queue.Queue()
  try:
    engine.submit([Row(ids, 0, SamplingConfig(temperature=0.0), 0, (), got.put, logprobs=3,
                       echo=True, echo_from=1)])
    prompt, end = got.get(timeout=60), got.get(timeout=60)
  finally:
    engine.stop()
  assert isinstance(prompt, Prompt) and isinstance(end, Finished)
  assert end.completion_tokens == 0 and end.text == ''
  logits = model_def.merge(params)(jnp.asarray([ids]))
  logits = logits[0] if not isinstance(logits, tuple) else logits[0][0]
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
  assert [s.token for s in prompt.scores] == ids[1:]
  want = [logp[j - 1, ids[j]] for j in range(1, len(ids))]
  np.testing.assert_allclose([s.logprob for s in prompt.scores], want, atol=1e-5)
  for j, s in enumerate(prompt.scores, start=1):
    assert len(s.top) == 3 and s.top[0][0] == int(np.argmax(logp[j - 1]))


def test_a_full_queue_is_a_429_draining_a_503_and_a_slow_request_a_504(tiny):
  """The app in-process over a scheduler that is never started (nothing leaves its queue)."""
  from fastapi.testclient import TestClient

  from lm.serve.app import Service, create_app
  from lm.serve.batcher import Batcher
  from lm.serve.metrics import ServeMetrics

  model_def, params, tokenizer = tiny
  metrics = ServeMetrics()
  batcher = Batcher(Decoder(model_def, cache_len=CONTEXT), params, tokenizer, max_batch=2,
                    batch_wait_s=0.0)
  service = Service(batcher=batcher, tokenizer=tokenizer, context=CONTEXT, model_name='tiny',
                    step=0, metrics=metrics, vocab_size=tokenizer.vocab_size, scores=False,
                    max_queue=2, timeout_s=0.3)
  with TestClient(create_app(service)) as client:
    r = client.post('/v1/completions', json={'prompt': 'the', 'max_tokens': 2})
    assert r.status_code == 504 and r.json()['error']['type'] == 'timeout_error'
    r = client.post('/v1/completions', json={'prompt': ['a', 'b'], 'max_tokens': 2})
    assert r.status_code == 429 and r.json()['error']['code'] == 'queue_full'
    r = client.post('/v1/completions', json={'prompt': 'a', 'echo': True, 'max_tokens': 1})
    assert r.status_code == 400 and r.json()['error']['param'] == 'echo'
    service.draining = True
    r = client.post('/v1/chat/completions', json={'messages': [{'role': 'user',
                                                                  'content': 'hi'}]})
    assert r.status_code == 503 and 'shutting down' in r.json()['error']['message']
    assert client.get('/healthz').json()['status'] == 'draining'
  text = metrics.render().decode()
  assert 'lm_serve_rejected_total{reason="queue_full"} 1.0' in text
  assert 'lm_serve_rejected_total{reason="draining"} 1.0' in text


def _logprobs_run(engine, rows):
  """Runs rows one after another: [(text, [Score])] of each."""
  out = []
  for ids, n in rows:
    got = queue.Queue()
    engine.submit([Row(ids, n, SamplingConfig(temperature=0.0), 0, (), got.put, logprobs=5)])
    events = []
    while not events or not isinstance(events[-1], Finished | Failed):
      events.append(got.get(timeout=60))
    assert isinstance(events[-1], Finished), events[-1]
    out.append((''.join(e.text for e in events if isinstance(e, Text | Finished)),
                [s for e in events if isinstance(e, Text) for s in e.scores]))
  return out


def test_a_prefix_cache_hit_gives_the_logits_and_tokens_of_a_cold_prefill(tiny, slot_decoder):
  from lm.serve.metrics import ServeMetrics
  from lm.serve.prefix_cache import PrefixCache

  model_def, params, tokenizer = tiny
  first = tokenizer.encode('the quick brown fox jumps over th')  # 33 tokens: 4 full blocks
  second = first[:16] + tokenizer.encode('a lazy dog!')  # shares its first 2 blocks
  sd = slot_decoder

  # The logits after the prompt: blocks 0-1 copied from `first`'s row, against a cold row.
  def prefill(prompt, row, start):
    while True:
      _, last_V, row = sd.prefill_chunk(params, row, prompt, start)
      if last_V is not None:
        return np.asarray(last_V)
      start += sd.chunk
  row = sd.new_row()
  for start in range(0, 32, sd.chunk):
    _, _, row = sd.prefill_chunk(params, row, first, start)
  warm = sd.new_row()
  for start in (0, 8):
    warm = sd.write_block(warm, sd.read_block(row, start), start)
  np.testing.assert_allclose(prefill(second, warm, 16), prefill(second, sd.new_row(), 0),
                             atol=1e-5, rtol=0)

  # Through the engine: the same tokens and log-probabilities as with no prefix cache.
  metrics = ServeMetrics()
  cache = PrefixCache(block=sd.chunk, capacity=16, block_bytes=sd.block_bytes())
  cached = Engine(sd, params, tokenizer, steps_per_call=4, metrics=metrics, prefix_cache=cache)
  cold = _engine(tiny, sd)
  rows = [(first, 6), (second, 8), (second, 8)]
  for engine in (cached, cold):
    engine.start()
  try:
    got, want = _logprobs_run(cached, rows), _logprobs_run(cold, rows)
  finally:
    cached.stop()
    cold.stop()
  assert cold.prefix_cache is None
  for (text, scores), (want_text, want_scores) in zip(got, want, strict=True):
    assert text == want_text and len(scores) == len(want_scores) > 0
    for s, w in zip(scores, want_scores, strict=True):
      assert s.token == w.token and [t for t, _ in s.top] == [t for t, _ in w.top]
      np.testing.assert_allclose([s.logprob] + [p for _, p in s.top],
                                 [w.logprob] + [p for _, p in w.top], atol=1e-5, rtol=0)
  # first (33 tokens): its 4 full blocks missed; second (27 tokens, 3 full blocks, none
  # holding its last token): 2 hits and a miss; its repeat: 3 hits (the miss was stored).
  assert (cache.hits, cache.misses) == (5, 5)
  text = metrics.render().decode()
  assert 'lm_serve_prefix_cache_hits_total 5.0' in text
  assert 'lm_serve_prefix_cache_misses_total 5.0' in text
  assert 'lm_serve_prefix_cache_hit_rate 0.5' in text
  assert len(cache) == 5  # first's 4 blocks and the third block of second


def test_the_prefix_cache_evicts_the_least_recently_used_within_its_bound(tiny, slot_decoder):
  from lm.serve.prefix_cache import PrefixCache, block_keys

  keys = block_keys(list(range(40)), 8)
  assert len(keys) == 5 and len(set(keys)) == 5
  assert block_keys(list(range(8)) + [99] * 8, 8)[0] == keys[0]
  assert block_keys([99] * 8 + list(range(8, 16)), 8)[1] != keys[1]  # a key names its prefix
  cache = PrefixCache(block=8, capacity=2)
  cache.put(keys[0], {'b': 0})
  cache.put(keys[1], {'b': 1})
  assert cache.lookup(keys[:1]) == [{'b': 0}]  # block 0 is now the most recent
  cache.put(keys[2], {'b': 2})
  assert len(cache) == 2 and keys[1] not in cache and keys[0] in cache
  assert cache.evictions == 1
  assert cache.lookup(keys) == [{'b': 0}]  # stops at its first miss
  with pytest.raises(Exception, match='capacity'):
    PrefixCache(block=8, capacity=0)

  # An engine whose store holds 2 blocks never holds more, however long the prompts.
  _, params, tokenizer = tiny
  small = PrefixCache(block=slot_decoder.chunk, capacity=2)
  engine = Engine(slot_decoder, params, tokenizer, prefix_cache=small)
  engine.start()
  try:
    _logprobs_run(engine, [(tokenizer.encode('x' * 40), 2), (tokenizer.encode('y' * 30), 2)])
  finally:
    engine.stop()
  assert len(small) == 2 and small.evictions == 5 + 3 - 2


@pytest.mark.parametrize('kind', ['int8', 'tensor_parallel'])
def test_int8_and_tensor_parallel_decode_through_the_engine(tiny, kind):
  """int8 weights: the engine's tokens equal the int8 model's own Decoder.generate.
  Tensor parallel (2 devices, params and shared cache split by the rules): the engine's
  tokens equal the single-device float Decoder's."""
  from configs.default import get_config
  from lm.infer.sharding import decode_mesh
  from lm.model.quantize import quantize
  from lm.parallel import rules_for
  from lm.run import place_params

  model_def, params, tokenizer = tiny
  greedy = SamplingConfig(temperature=0.0)
  specs = [(tokenizer.encode(p), n, greedy, 0) for p, n in
           (('the quick brown fox', 10), ('a', 14), ('over the lazy dog', 6))]
  if kind == 'int8':
    model_def, params = quantize(model_def, params)
    assert params['blocks']['attn']['qkv']['kernel'].dtype == jnp.int8
    decoder = Decoder(model_def, cache_len=CONTEXT)
    served = params
  else:
    mesh, rules = decode_mesh(tensor=2), rules_for(get_config().mesh)
    served = place_params(model_def, params, mesh, rules)
    decoder = Decoder(model_def, cache_len=CONTEXT, mesh=mesh, rules=rules)
  slots = SlotDecoder(decoder, slots=2, eos_id=tokenizer.eos_id, chunk=8)
  if kind == 'tensor_parallel':
    assert slots.new_cache()['k'].sharding.spec[3] == 'tensor'  # kv heads split
  engine = Engine(slots, served, tokenizer, steps_per_call=4)
  engine.start()
  try:
    got = [c.text() for c in _run(engine, specs)]
  finally:
    engine.stop()
  alone = Decoder(model_def, cache_len=CONTEXT)
  for i, (ids, n, _, _) in enumerate(specs):
    ref = alone.generate(params, [ids], max_new_tokens=n, sampling=greedy,
                         stop_tokens=[[tokenizer.eos_id]])[0]
    assert got[i] == tokenizer.decode(ref), (kind, i)
  assert len(set(got)) > 1
