"""Serve a trained run over HTTP: `python -m lm.serve --workdir=DIR [--port=8000]`.

Loads the workdir's latest (or --step) checkpoint and tokenizer with lm.generate's loader,
then serves an OpenAI-style POST /v1/completions (batched across concurrent requests),
GET /healthz and GET /metrics with uvicorn until Ctrl-C. docs/serving.md has the details.

The flags are parsed with argparse: importing lm.generate (for its loader) defines that
command's absl flags, which this command must not inherit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from lm.errors import UserError
from lm.run import load_run
from lm.workdir import check_trained as check_workdir


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m lm.serve', description='Serve a trained workdir over HTTP (OpenAI-style '
      'completions API). See docs/serving.md.')
  p.add_argument('--workdir', required=True,
                 help='Training workdir (holds config.json and checkpoints/) to serve; required.')
  p.add_argument('--host', default='127.0.0.1',
                 help='Address to listen on; 0.0.0.0 listens on every interface.')
  p.add_argument('--port', type=int, default=8000,
                 help='TCP port to listen on; 0 = any free port (the URL printed at start-up '
                 'names it).')
  p.add_argument('--step', type=int, default=None,
                 help='Checkpoint step to load; default: the latest.')
  p.add_argument('--tokenizer_dir', default=None,
                 help='Directory of a saved tokenizer (tokenizer.json); default: the one the '
                 'run used, from the (cached) data preparation its config describes.')
  p.add_argument('--cache_len', type=int, default=0,
                 help="Context in tokens (prompt + completion) of every request, the KV cache "
                 "length; 0 = the model's max_len.")
  p.add_argument('--quantize', default='none', choices=['none', 'int8'],
                 help='Weight quantization: int8 keeps matmul weights as int8 with a float scale '
                 'per output channel (about 4x less weight memory; docs/deployment.md).')
  p.add_argument('--max_batch', type=int, default=8,
                 help='Most prompts run together in one device batch.')
  p.add_argument('--batch_wait_ms', type=float, default=10.0,
                 help='How long the oldest waiting prompt waits for others to share its batch '
                 '(milliseconds); 0 = run whatever is waiting at once.')
  p.add_argument('--warmup', action=argparse.BooleanOptionalAction, default=True,
                 help='Compile every batch shape (prompts up to 16 tokens) before serving, so '
                 'that the first requests of each do not wait for it; --no-warmup skips it.')
  p.add_argument('--api_key', default=None,
                 help='Require "Authorization: Bearer KEY" on every request except /healthz; '
                 'default: the LM_API_KEY environment variable, else no key.')
  p.add_argument('--model_name', default=None,
                 help='The model name responses carry; default: the workdir\'s directory name.')
  p.add_argument('--log_level', default='warning',
                 choices=['critical', 'error', 'warning', 'info', 'debug'],
                 help='Server log level (info logs every request).')
  return p


def _check_args(args: argparse.Namespace) -> None:
  if not 0 <= args.port <= 65535:
    raise UserError(f'--port={args.port} is not a TCP port; give 0..65535 (0 = any free port)')
  if args.max_batch < 1:
    raise UserError(f'--max_batch={args.max_batch} must be >= 1')
  if not args.batch_wait_ms >= 0:
    raise UserError(f'--batch_wait_ms={args.batch_wait_ms} must be >= 0')
  if args.cache_len < 0:
    raise UserError(f'--cache_len={args.cache_len} must be >= 0 (0 = the model max_len)')
  if args.step is not None and args.step < 0:
    raise UserError(f'--step={args.step} must be a checkpoint step (>= 0)')


def _build(args: argparse.Namespace, workdir: str):
  """(app, batcher, step): the model loaded and the app around it."""
  from absl import logging as absl_logging
  if args.log_level != 'debug':
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax: a read-only manager is read-only

  from lm.checkpoint import CheckpointError
  from lm.config import ConfigError
  from lm.data import DataError
  from lm.infer import Decoder
  from lm.serve.app import Service, create_app
  from lm.serve.batcher import Batcher
  from lm.serve.metrics import ServeMetrics

  try:
    run = load_run(workdir, args.step, quantize=args.quantize)
    model_def, params, tokenizer, step = run.model_def, run.params, run.tokenizer, run.step
    decoder = Decoder(model_def, cache_len=args.cache_len or model_def.cfg.max_len)
  except (ValueError, ConfigError, DataError, CheckpointError) as e:
    raise UserError(str(e)) from e
  metrics = ServeMetrics()
  batcher = Batcher(decoder, params, tokenizer, max_batch=args.max_batch,
                    batch_wait_s=args.batch_wait_ms / 1000, metrics=metrics)
  if args.warmup:
    start = time.perf_counter()
    sizes = batcher.warm_up()
    print(f'lm.serve: compiled batch sizes {sizes} in {time.perf_counter() - start:.1f} s',
          flush=True)
  api_key = args.api_key if args.api_key is not None else os.environ.get('LM_API_KEY') or None
  service = Service(batcher=batcher, tokenizer=tokenizer, context=decoder.cache_len,
                    model_name=args.model_name or os.path.basename(workdir), step=step,
                    metrics=metrics, api_key=api_key)
  return create_app(service), batcher, step


def _bind(host: str, port: int) -> socket.socket:
  """A TCP socket bound to host:port (not listening yet)."""
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


def main(argv: list[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  try:
    _check_args(args)
    workdir = os.path.abspath(args.workdir)
    check_workdir(workdir)
    sock = _bind(args.host, args.port)  # a taken port fails now, not after loading
    app, batcher, step = _build(args, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)

  import uvicorn
  sock.listen(1024)  # connections are refused until the model is ready
  host, port = sock.getsockname()[:2]
  shown = f'[{host}]' if ':' in host else host
  print(f'lm.serve: {workdir} (checkpoint step {step}) at http://{shown}:{port} '
        f'(POST /v1/completions; Ctrl-C stops)', flush=True)
  batcher.start()
  server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False,
                                         timeout_graceful_shutdown=5))
  try:
    server.run(sockets=[sock])
  except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after shutting down
    pass
  finally:
    batcher.stop()
    sock.close()
  print('lm.serve: stopped', flush=True)


if __name__ == '__main__':
  try:
    main()
  except KeyboardInterrupt:  # Ctrl-C while loading
    sys.exit(130)
