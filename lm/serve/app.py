"""The FastAPI app: POST /v1/completions and /v1/chat/completions (JSON or server-sent
events), POST /tokenize and /detokenize, GET /tokenizer_info, /v1/models, /healthz,
/metrics and /openapi.json. Requests are validated here (protocol.py, chat.py) and their
rows handed to the scheduler (engine.Engine, or the static batcher.Batcher)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import random
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lm.errors import InputError
from lm.infer.sampling import SamplingConfig
from lm.serve import chat, protocol, schemas
from lm.serve.batcher import Failed, Finished, Prompt, Row
from lm.serve.metrics import ServeMetrics
from lm.serve.protocol import RequestError
from lm.serve.templates import SFT, ChatTemplate

COMPLETIONS, CHAT = '/v1/completions', '/v1/chat/completions'
ROUTES = ('POST /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize, '
          'GET /tokenizer_info, GET /v1/models, GET /healthz, GET /metrics, GET /openapi.json')
PATHS = (COMPLETIONS, CHAT, '/tokenize', '/detokenize', '/tokenizer_info', '/v1/models',
         '/healthz', '/metrics', '/openapi.json')
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks for its client


@dataclasses.dataclass
class Service:
  """What the app serves: the scheduler and tokenizer of one model, and its limits."""

  batcher: Any  # engine.Engine or batcher.Batcher
  tokenizer: Any
  context: int  # tokens a prompt and its continuation may take together (the KV cache)
  model_name: str
  step: int
  metrics: ServeMetrics
  api_key: str | None = None
  vocab_size: int | None = None
  add_bos: bool = True  # prompts get the bos token the model was trained after
  scores: bool = True  # the scheduler reports logprobs (the continuous engine does)
  max_queue: int = 256  # rows waiting for the scheduler; more is a 429
  timeout_s: float = 600.0  # a request still running after this is cancelled (504)
  draining: bool = False  # set on SIGTERM: new requests get a 503
  chat_template: ChatTemplate = SFT  # renders chat messages (templates.for_run picks it)


@dataclasses.dataclass
class _Choice:
  text: str = ''
  reason: str | None = None
  made: int = 0
  prompt_scores: tuple = ()
  scores: list = dataclasses.field(default_factory=list)


async def _read_body(request: Request) -> bytes:
  """The request body; a 413 RequestError as soon as it passes MAX_BODY_BYTES."""
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > protocol.MAX_BODY_BYTES:
      raise RequestError(f'the request body is over {protocol.MAX_BODY_BYTES} bytes; send a '
                         'smaller one (fewer or shorter prompts)', status=413)
  return bytes(body)


def create_app(service: Service) -> FastAPI:
  app = FastAPI(title='lm', docs_url=None, redoc_url=None)
  schemas.install_openapi(app)
  metrics, tok, template = service.metrics, service.tokenizer, service.chat_template

  def error(path: str, e: RequestError, kind: str) -> JSONResponse:
    path = path if path in PATHS else 'other'  # no label per random URL a scanner tries
    metrics.requests.labels(path, str(e.status)).inc()
    metrics.errors.labels(kind).inc()
    headers = {'WWW-Authenticate': 'Bearer'} if e.status == 401 else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)

  def denied(request: Request) -> JSONResponse | None:
    """A 401 response unless the request carries the API key (when the server has one)."""
    if not service.api_key:
      return None
    header = request.headers.get('authorization', '')
    scheme, _, token = header.partition(' ')
    if scheme.lower() == 'bearer' and hmac.compare_digest(token.strip().encode(),
                                                          service.api_key.encode()):
      return None
    what = 'no Authorization header' if not header else 'a wrong API key'
    return error(request.url.path, RequestError(
        f'the request has {what}; send the header "Authorization: Bearer <key>" with the key '
        'the server was started with (--api_key or LM_API_KEY)', status=401,
        kind='authentication_error', code='invalid_api_key'), 'authentication')

  def ok(path: str, body: dict) -> JSONResponse:
    metrics.requests.labels(path, '200').inc()
    return JSONResponse(body)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(request.url.path, RequestError(
        f'{request.method} {request.url.path}: {exc.detail}; this server has {ROUTES}',
        status=exc.status_code), 'invalid_request')

  @app.exception_handler(Exception)
  async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error(request.url.path, RequestError(
        f'internal error: {type(exc).__name__}: {exc}', status=500, kind='server_error'),
        'internal')

  @app.get('/healthz')
  async def healthz() -> dict[str, Any]:
    return {'status': 'draining' if service.draining else 'ok', 'model': service.model_name,
            'step': service.step}

  @app.get('/metrics')
  async def get_metrics(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    return Response(metrics.render(), media_type=metrics.content_type)

  @app.get('/v1/models')
  async def models(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    return ok('/v1/models', {'object': 'list', 'data': [
        {'id': service.model_name, 'object': 'model', 'created': 0, 'owned_by': 'lm',
         'max_model_len': service.context}]})

  # ---- tokenizer endpoints -----------------------------------------------------------------

  def encode(text: str, special: bool = True) -> list[int]:
    return ([tok.bos_id] if special and service.add_bos else []) + tok.encode(text)

  @app.post('/tokenize', responses={200: {'model': schemas.TokenizeResponse}, **schemas.ERRORS},
            openapi_extra=schemas.request_body('/tokenize'))
  async def tokenize(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    try:
      text, special = chat.parse_tokenize(await _read_body(request), template)
    except RequestError as e:
      return error('/tokenize', e, 'invalid_request')
    ids = encode(text, special)
    return ok('/tokenize', {'count': len(ids), 'max_model_len': service.context, 'tokens': ids})

  @app.post('/detokenize', openapi_extra=schemas.request_body('/detokenize'),
            responses={200: {'model': schemas.DetokenizeResponse}, **schemas.ERRORS})
  async def detokenize(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    try:
      ids = chat.parse_detokenize(await _read_body(request), service.vocab_size or 1 << 31)
    except RequestError as e:
      return error('/detokenize', e, 'invalid_request')
    return ok('/detokenize', {'prompt': tok.decode(ids)})

  @app.get('/tokenizer_info', responses={200: {'model': schemas.TokenizerInfo}})
  async def tokenizer_info(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    # Special tokens have no text that encodes to them, so their strings are null (lm-eval
    # then adds no eos stop string and takes no eos id from /tokenize).
    return ok('/tokenizer_info', {
        'tokenizer_class': type(tok).__name__, 'bos_token': None, 'eos_token': None,
        'pad_token': None, 'bos_token_id': tok.bos_id, 'eos_token_id': tok.eos_id,
        'vocab_size': service.vocab_size, 'model_max_length': service.context,
        'chat_template': template.text})

  # ---- generation --------------------------------------------------------------------------

  def admit(path: str, rows: list[Row]) -> JSONResponse | None:
    """Queues the rows; a 503 while draining, a 429 when the queue is full."""
    if service.draining:
      metrics.rejected.labels('draining').inc()
      return error(path, RequestError('the server is shutting down; send the request to '
                                      'another replica or retry later', status=503,
                                      kind='server_error'), 'unavailable')
    if service.batcher.queued() + len(rows) > service.max_queue:
      metrics.rejected.labels('queue_full').inc()
      return error(path, RequestError(
          f'the server has {service.batcher.queued()} prompts waiting (--max_queue='
          f'{service.max_queue}); retry later', status=429, kind='rate_limit_error',
          code='queue_full'), 'queue_full')
    try:
      service.batcher.submit(rows)
    except RuntimeError as e:
      return error(path, RequestError(str(e), status=503, kind='server_error'), 'unavailable')
    return None

  def make_rows(prompt_ids, echo_from, sampling_kw: dict, *, max_tokens: int, n: int,
                seed: int | None, stop, logprobs, echo, sink) -> list[Row]:
    sampling = SamplingConfig(**sampling_kw)
    seed = random.getrandbits(32) if seed is None else seed
    return [Row(ids, max_tokens, sampling, (seed + j) % (1 << 32), stop, sink(i * n + j),
                logprobs=logprobs, echo=echo, echo_from=skip)
            for i, (ids, skip) in enumerate(zip(prompt_ids, echo_from, strict=True))
            for j in range(n)]

  async def collect(request: Request, rows: list[Row], events: asyncio.Queue
                    ) -> list[_Choice] | RequestError:
    """Every row's result; cancels them when the client goes or the time is up."""
    choices = [_Choice() for _ in rows]
    deadline = time.monotonic() + service.timeout_s
    try:
      while any(c.reason is None for c in choices):
        try:
          index, event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except TimeoutError:
          if await request.is_disconnected():
            return RequestError('the client disconnected', status=499)
          if time.monotonic() > deadline:
            return RequestError(f'the request ran past the server timeout of '
                                f'{service.timeout_s:g} s; ask for fewer tokens', status=504,
                                kind='timeout_error')
          continue
        c = choices[index]
        if isinstance(event, Failed):
          return RequestError(event.message, status=500, kind='server_error')
        if isinstance(event, Prompt):
          c.prompt_scores = event.scores
          continue
        c.text += event.text
        c.scores += event.scores
        if isinstance(event, Finished):
          c.reason, c.made = event.finish_reason, event.completion_tokens
      return choices
    finally:
      for row in rows:
        row.cancelled = True  # rows already finished ignore it

  async def events_of(rows: list[Row], events: asyncio.Queue):
    """(index, event) as they come, until every row has finished; cancels them after."""
    left, deadline = len(rows), time.monotonic() + service.timeout_s
    try:
      while left:
        try:
          index, event = await asyncio.wait_for(events.get(), deadline - time.monotonic())
        except TimeoutError:
          yield -1, Failed(f'the request ran past the server timeout of {service.timeout_s:g} s')
          return
        if isinstance(event, Finished):
          left -= 1
        yield index, event
        if isinstance(event, Failed):
          return
    finally:
      for row in rows:
        row.cancelled = True

  def queue_pair():
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    def sink(index: int):
      return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))
    return events, sink

  def stream_response(path: str, chunks) -> StreamingResponse:
    metrics.requests.labels(path, '200').inc()
    return StreamingResponse(chunks, media_type='text/event-stream',
                             headers={'Cache-Control': 'no-cache'})

  def finished(path: str, start: float, result) -> JSONResponse | None:
    if isinstance(result, RequestError):
      return error(path, result, 'disconnected' if result.status == 499 else 'generation')
    metrics.latency.observe(time.perf_counter() - start)
    return None

  @app.post(COMPLETIONS, openapi_extra=schemas.request_body(COMPLETIONS),
            responses={200: {'model': schemas.CompletionResponse}, **schemas.ERRORS})
  async def completions(request: Request) -> Response:
    start = time.perf_counter()
    if (refusal := denied(request)) is not None:
      return refusal
    try:
      req = protocol.parse_completion_request(await _read_body(request))
      if not service.scores and (req.logprobs is not None or req.echo):
        raise RequestError(f'field {"echo" if req.echo else "logprobs"!r} needs the continuous '
                           'scheduler; start the server with --scheduler=continuous',
                           param='echo' if req.echo else 'logprobs')
      prompt_ids, echo_from, prompt_texts = [], [], []
      for p in req.prompts:
        ids = tok.encode(p) if isinstance(p, str) else list(p)
        bos = service.add_bos and not (ids and ids[0] == tok.bos_id)
        prompt_ids.append([tok.bos_id] * bos + ids)
        echo_from.append(int(bos))
        prompt_texts.append(p if isinstance(p, str) else tok.decode(ids))
      protocol.check_context(prompt_ids, req.max_tokens, service.context, service.vocab_size)
      events, sink = queue_pair()
      rows = make_rows(prompt_ids, echo_from, dict(temperature=req.temperature, top_k=req.top_k,
                                                   top_p=req.top_p),
                       max_tokens=req.max_tokens, n=req.n, seed=req.seed, stop=req.stop,
                       logprobs=req.logprobs, echo=req.echo, sink=sink)
    except RequestError as e:
      return error(COMPLETIONS, e, 'invalid_request')
    except InputError as e:  # the protocol's bounds are narrower; a 400 all the same
      return error(COMPLETIONS, RequestError(str(e)), 'invalid_request')
    if (refusal := admit(COMPLETIONS, rows)) is not None:
      return refusal
    prompt_tokens = sum(len(ids) - skip for ids, skip in zip(prompt_ids, echo_from, strict=True))
    metrics.prompt_tokens.inc(prompt_tokens)
    request_id, created = f'cmpl-{uuid.uuid4().hex}', int(time.time())
    k = req.logprobs or 0
    want = req.logprobs is not None

    def prompt_text(index: int) -> str:
      return prompt_texts[index // req.n] if req.echo else ''

    if req.stream:
      async def chunks():
        offsets = [len(prompt_text(i)) for i in range(len(rows))]
        completion_tokens = 0
        async for index, event in events_of(rows, events):
          if isinstance(event, Failed):
            metrics.errors.labels('generation').inc()
            yield protocol.sse(protocol.error_json(event.message, kind='server_error'))
            return
          if isinstance(event, Prompt):
            text = prompt_text(index)
            lp = protocol.logprobs_json(tok, event.scores, k) if want else None
            reason = None
          else:
            text, reason = event.text, getattr(event, 'finish_reason', None)
            lp = protocol.logprobs_json(tok, event.scores, k, offsets[index]) if want else None
            offsets[index] += len(text)
            completion_tokens += getattr(event, 'completion_tokens', 0)
          yield protocol.sse({'id': request_id, 'object': 'text_completion',
                              'created': created, 'model': service.model_name,
                              'choices': [protocol.choice_json(index, text, reason, lp)]})
        if req.include_usage:
          yield protocol.sse({'id': request_id, 'object': 'text_completion',
                              'created': created, 'model': service.model_name, 'choices': [],
                              'usage': {'prompt_tokens': prompt_tokens,
                                        'completion_tokens': completion_tokens,
                                        'total_tokens': prompt_tokens + completion_tokens}})
        metrics.latency.observe(time.perf_counter() - start)
        yield protocol.sse('[DONE]')
      return stream_response(COMPLETIONS, chunks())

    result = await collect(request, rows, events)
    if (refusal := finished(COMPLETIONS, start, result)) is not None:
      return refusal
    choices = []
    for i, c in enumerate(result):
      head = prompt_text(i)
      lp = None
      if want:
        lp = protocol.logprobs_json(tok, (*c.prompt_scores, *c.scores), k)
      choices.append(protocol.choice_json(i, head + c.text, c.reason, lp))
    return ok(COMPLETIONS, protocol.completion_json(
        request_id, created, service.model_name, choices, prompt_tokens=prompt_tokens,
        completion_tokens=sum(c.made for c in result)))

  @app.post(CHAT, openapi_extra=schemas.request_body(CHAT),
            responses={200: {'model': schemas.ChatCompletionResponse}, **schemas.ERRORS})
  async def chat_completions(request: Request) -> Response:
    start = time.perf_counter()
    if (refusal := denied(request)) is not None:
      return refusal
    try:
      req = chat.parse_chat_request(await _read_body(request), template)
      ids = encode(req.prompt, template.add_bos)
      max_tokens = req.max_tokens or max(service.context - len(ids), 1)
      protocol.check_context([ids], max_tokens, service.context)
      events, sink = queue_pair()
      rows = make_rows([ids], [0], dict(temperature=req.temperature, top_k=req.top_k,
                                        top_p=req.top_p),
                       max_tokens=max_tokens, n=req.n, seed=req.seed, stop=req.stop,
                       logprobs=None, echo=False, sink=sink)
    except RequestError as e:
      return error(CHAT, e, 'invalid_request')
    except InputError as e:
      return error(CHAT, RequestError(str(e)), 'invalid_request')
    if (refusal := admit(CHAT, rows)) is not None:
      return refusal
    metrics.prompt_tokens.inc(len(ids))
    request_id, created = f'chatcmpl-{uuid.uuid4().hex}', int(time.time())
    name = service.model_name

    if req.stream:
      async def chunks():
        for i in range(len(rows)):
          yield protocol.sse(chat.chat_chunk(request_id, created, name, i,
                                             {'role': 'assistant', 'content': ''}, None))
        async for index, event in events_of(rows, events):
          if isinstance(event, Failed):
            metrics.errors.labels('generation').inc()
            yield protocol.sse(protocol.error_json(event.message, kind='server_error'))
            return
          reason = getattr(event, 'finish_reason', None)
          delta = {'content': event.text} if event.text or reason is None else {}
          yield protocol.sse(chat.chat_chunk(request_id, created, name, index, delta, reason))
        metrics.latency.observe(time.perf_counter() - start)
        yield protocol.sse('[DONE]')
      return stream_response(CHAT, chunks())

    result = await collect(request, rows, events)
    if (refusal := finished(CHAT, start, result)) is not None:
      return refusal
    return ok(CHAT, chat.chat_json(request_id, created, name,
                                   [(c.text, c.reason) for c in result], len(ids),
                                   sum(c.made for c in result)))

  return app
