"""The FastAPI app: POST /v1/completions (JSON or server-sent events), GET /v1/models,
GET /healthz, GET /metrics. Requests are validated here and handed to the `Batcher`."""

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
from lm.serve import protocol
from lm.serve.batcher import Batcher, Failed, Finished, Row
from lm.serve.metrics import ServeMetrics
from lm.serve.protocol import RequestError

COMPLETIONS = '/v1/completions'
ROUTES = 'POST /v1/completions, GET /v1/models, GET /healthz, GET /metrics'
PATHS = ('/v1/completions', '/v1/models', '/healthz', '/metrics')


@dataclasses.dataclass
class Service:
  """What the app serves: the batcher and tokenizer of one model, and its limits."""

  batcher: Batcher
  tokenizer: Any
  context: int  # tokens a prompt and its continuation may take together (the KV cache)
  model_name: str
  step: int
  metrics: ServeMetrics
  api_key: str | None = None


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
  app = FastAPI(title='lm', docs_url=None, redoc_url=None, openapi_url=None)
  metrics = service.metrics

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
    return {'status': 'ok', 'model': service.model_name, 'step': service.step}

  @app.get('/metrics')
  async def get_metrics(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    return Response(metrics.render(), media_type=metrics.content_type)

  @app.get('/v1/models')
  async def models(request: Request) -> Response:
    if (refusal := denied(request)) is not None:
      return refusal
    metrics.requests.labels('/v1/models', '200').inc()
    return JSONResponse({'object': 'list', 'data': [
        {'id': service.model_name, 'object': 'model', 'created': 0, 'owned_by': 'lm'}]})

  @app.post(COMPLETIONS)
  async def completions(request: Request) -> Response:
    start = time.perf_counter()
    if (refusal := denied(request)) is not None:
      return refusal
    try:
      req = protocol.parse_completion_request(await _read_body(request))
      prompt_ids = [service.tokenizer.encode(p) for p in req.prompts]
      protocol.check_context(prompt_ids, req.max_tokens, service.context)
    except RequestError as e:
      return error(COMPLETIONS, e, 'invalid_request')

    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def sink(index: int):
      return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))

    try:
      sampling = SamplingConfig(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p)
    except InputError as e:  # the protocol's bounds are narrower; a 400 all the same
      return error(COMPLETIONS, RequestError(str(e)), 'invalid_request')
    seed = random.getrandbits(32) if req.seed is None else req.seed
    rows = [Row(ids, req.max_tokens, sampling, seed, req.stop, sink(i))
            for i, ids in enumerate(prompt_ids)]
    try:
      service.batcher.submit(rows)
    except RuntimeError as e:
      return error(COMPLETIONS, RequestError(str(e), status=503, kind='server_error'),
                   'unavailable')
    metrics.prompt_tokens.inc(sum(map(len, prompt_ids)))
    request_id, created = f'cmpl-{uuid.uuid4().hex}', int(time.time())

    def cancel() -> None:  # rows already finished ignore it
      for row in rows:
        row.cancelled = True

    if req.stream:
      async def chunks():
        left = len(rows)
        try:
          while left:
            index, event = await events.get()
            if isinstance(event, Failed):
              metrics.errors.labels('generation').inc()
              yield protocol.sse(protocol.error_json(event.message, kind='server_error'))
              return
            reason = event.finish_reason if isinstance(event, Finished) else None
            if reason is not None:
              left -= 1
            yield protocol.sse({'id': request_id, 'object': 'text_completion',
                                'created': created, 'model': service.model_name,
                                'choices': [protocol.choice_json(index, event.text, reason)]})
          metrics.latency.observe(time.perf_counter() - start)
          yield protocol.sse('[DONE]')
        finally:
          cancel()

      metrics.requests.labels(COMPLETIONS, '200').inc()
      return StreamingResponse(chunks(), media_type='text/event-stream',
                               headers={'Cache-Control': 'no-cache'})

    texts, reasons, made = [''] * len(rows), [None] * len(rows), 0
    try:
      while any(r is None for r in reasons):
        index, event = await events.get()
        if isinstance(event, Failed):
          return error(COMPLETIONS, RequestError(event.message, status=500, kind='server_error'),
                       'generation')
        texts[index] += event.text
        if isinstance(event, Finished):
          reasons[index], made = event.finish_reason, made + event.completion_tokens
    finally:
      cancel()
    metrics.requests.labels(COMPLETIONS, '200').inc()
    metrics.latency.observe(time.perf_counter() - start)
    choices = [protocol.choice_json(i, text, reason)
               for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))]
    return JSONResponse(protocol.completion_json(
        request_id, created, service.model_name, choices,
        prompt_tokens=sum(map(len, prompt_ids)), completion_tokens=made))

  return app
