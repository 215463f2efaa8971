"""A loaded run behind the HTTP app: `build` makes the decoder, batcher and app of a run,
`bind` takes the port, `serve` runs uvicorn on it until Ctrl-C (the command is lm/cli/serve.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from lm.errors import UserError
from lm.infer import Decoder
from lm.run import Run
from lm.serve.app import Service, create_app
from lm.serve.batcher import Batcher
from lm.serve.metrics import ServeMetrics


def build(run: Run, *, cache_len: int = 0, max_batch: int = 8, batch_wait_s: float = 0.01,
          api_key: str | None = None, model_name: str | None = None, warmup: bool = True,
          log: Callable[[str], None] = print) -> tuple[FastAPI, Batcher]:
  """(app, batcher) serving `run`: every request's context is `cache_len` tokens (0 = the
  model's max_len). With `warmup` every batch shape is compiled before it returns."""
  decoder = Decoder(run.model_def, cache_len=cache_len or run.model_def.cfg.max_len)
  metrics = ServeMetrics()
  batcher = Batcher(decoder, run.params, run.tokenizer, max_batch=max_batch,
                    batch_wait_s=batch_wait_s, metrics=metrics)
  if warmup:
    start = time.perf_counter()
    sizes = batcher.warm_up()
    log(f'lm.serve: compiled batch sizes {sizes} in {time.perf_counter() - start:.1f} s')
  name = model_name or os.path.basename(run.workdir.rstrip('/')) or run.workdir
  service = Service(batcher=batcher, tokenizer=run.tokenizer, context=decoder.cache_len,
                    model_name=name, step=run.step, metrics=metrics, api_key=api_key)
  return create_app(service), batcher


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


def serve(app: FastAPI, batcher: Batcher, sock: socket.socket, *,
          log_level: str = 'warning') -> None:
  """Serves on `sock` (bound and listening) until Ctrl-C; the batcher runs meanwhile and
  is stopped after."""
  batcher.start()
  server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                         timeout_graceful_shutdown=5))
  try:
    server.run(sockets=[sock])
  except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after shutting down
    pass
  finally:
    batcher.stop()
    sock.close()
