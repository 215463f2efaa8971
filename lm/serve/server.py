"""A loaded run behind the HTTP app: `build` makes the decoder, scheduler and app of a run,
`bind` takes the port, `serve` runs uvicorn on it until Ctrl-C or SIGTERM, which drain:
new requests get a 503 while those in flight finish (the command is lm/cli/serve.py).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from lm.errors import UserError
from lm.infer import Decoder
from lm.infer.slots import SlotDecoder
from lm.run import Run
from lm.serve.app import Service, create_app
from lm.serve.batcher import Batcher
from lm.serve.engine import Engine
from lm.serve.metrics import ServeMetrics
from lm.serve.prefix_cache import PrefixCache
from lm.serve.templates import for_run

SCHEDULERS = ('continuous', 'static')


def build(run: Run, *, cache_len: int = 0, max_batch: int = 8, batch_wait_s: float = 0.01,
          api_key: str | None = None, model_name: str | None = None, warmup: bool = True,
          scheduler: str = 'continuous', steps_per_call: int = 4, prefill_chunk: int = 32,
          max_queue: int = 256, timeout_s: float = 600.0, prefix_cache_mb: float = 64.0,
          mesh=None, rules=(),
          log: Callable[[str], None] = print) -> tuple[FastAPI, Engine | Batcher]:
  """(app, scheduler) serving `run`: every request's context is `cache_len` tokens (0 = the
  model's max_len). `scheduler` 'continuous' runs `max_batch` decode slots (engine.py);
  'static' the batcher that runs each batch to its longest row (batcher.py). With `warmup`
  every shape is compiled before it returns. `prefix_cache_mb` > 0 gives the continuous
  scheduler a prefix cache of at most that many MiB (prefix_cache.py). Chat messages are
  rendered with the template templates.for_run picks (logged)."""
  if scheduler not in SCHEDULERS:
    raise UserError(f'scheduler={scheduler!r}; give one of {", ".join(SCHEDULERS)}')
  template, why = for_run(run)  # a template that does not parse fails before compiling
  log(f'lm.serve: chat template: {template.describe()}; {why}')
  decoder = Decoder(run.model_def, cache_len=cache_len or run.model_def.cfg.max_len,
                    mesh=mesh, rules=rules)
  metrics = ServeMetrics()
  if scheduler == 'continuous':
    slots = SlotDecoder(decoder, slots=max_batch, eos_id=run.tokenizer.eos_id,
                        chunk=prefill_chunk)
    prefix = None
    if prefix_cache_mb > 0:
      capacity = int(prefix_cache_mb * (1 << 20)) // slots.block_bytes()
      if capacity < 1:
        raise UserError(f'prefix_cache_mb={prefix_cache_mb} holds no block of '
                        f'{slots.block_bytes()} bytes ({slots.chunk} tokens); give more, or '
                        '0 to turn the prefix cache off')
      prefix = PrefixCache(block=slots.chunk, capacity=capacity,
                           block_bytes=slots.block_bytes())
    batcher = Engine(slots, run.params, run.tokenizer, steps_per_call=steps_per_call,
                     metrics=metrics, prefix_cache=prefix)
    metrics.slots_total.set(max_batch)
  else:
    batcher = Batcher(decoder, run.params, run.tokenizer, max_batch=max_batch,
                      batch_wait_s=batch_wait_s, metrics=metrics)
  if warmup:
    start = time.perf_counter()
    sizes = batcher.warm_up()
    log(f'lm.serve: {scheduler} scheduler, compiled batch sizes {sizes} in '
        f'{time.perf_counter() - start:.1f} s')
  name = model_name or os.path.basename(run.workdir.rstrip('/')) or run.workdir
  service = Service(batcher=batcher, tokenizer=run.tokenizer, context=decoder.cache_len,
                    model_name=name, step=run.step, metrics=metrics, api_key=api_key,
                    vocab_size=run.model_def.cfg.vocab_size,
                    scores=scheduler == 'continuous', max_queue=max_queue, timeout_s=timeout_s,
                    chat_template=template)
  app = create_app(service)
  app.state.service = service
  return app, batcher


def bind(host: str, port: int) -> socket.socket:
  """A TCP socket bound to host:port (not listening yet: connections wait for `serve`)."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
  except OSError as e:
    raise UserError(f'cannot listen on {host}:{port} ({e}); pick another --port (0 = any free '
                    'port) or --host') from e
  return sock


def url(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://{f"[{host}]" if ":" in host else host}:{port}'


class _Terminated(Exception):
  """SIGTERM, which uvicorn raises again once it has drained."""


def _on_sigterm(signum, frame) -> None:
  raise _Terminated


class _DrainingServer(uvicorn.Server):
  """uvicorn's server, which on SIGTERM / Ctrl-C also marks the service draining: requests
  on connections still open get a 503 while those in flight finish."""

  def __init__(self, config: uvicorn.Config, service: Service | None):
    super().__init__(config)
    self.service = service

  def handle_exit(self, sig, frame) -> None:
    if self.service is not None:
      self.service.draining = True
    super().handle_exit(sig, frame)


def serve(app: FastAPI, batcher: Engine | Batcher, sock: socket.socket, *,
          log_level: str = 'warning', drain_s: float = 30.0) -> None:
  """Serves on `sock` (bound and listening) until Ctrl-C or SIGTERM, then waits up to
  `drain_s` for requests in flight; the scheduler runs meanwhile and is stopped after."""
  batcher.start()
  server = _DrainingServer(uvicorn.Config(app, log_level=log_level, access_log=False,
                                          timeout_graceful_shutdown=drain_s),
                           getattr(app.state, 'service', None))
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  try:
    server.run(sockets=[sock])
  except (KeyboardInterrupt, _Terminated):  # uvicorn re-raises the signal it handled, after
    pass  # draining
  finally:
    signal.signal(signal.SIGTERM, previous)
    batcher.stop()
    sock.close()
