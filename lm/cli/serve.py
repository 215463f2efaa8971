"""`python -m lm serve --workdir=DIR [--port=8000]`: serve a trained run over HTTP.

Loads the workdir's latest (or --step) checkpoint and tokenizer with lm.run.load_run, then
serves an OpenAI-style API (/v1/completions, /v1/chat/completions, /tokenize, ...; requests
share decode slots by continuous batching) with uvicorn until Ctrl-C or SIGTERM (both
drain the requests in flight).
docs/serving.md has the details; the library half is lm/serve/server.py.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from lm import cli
from lm.errors import UserError
from lm.workdir import check_trained

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Training workdir (holds config.json and checkpoints/) to serve; required.')
_HOST = flags.DEFINE_string(
    'host', '127.0.0.1', 'Address to listen on; 0.0.0.0 listens on every interface.')
_PORT = flags.DEFINE_integer(
    'port', 8000, 'TCP port to listen on; 0 = any free port (the URL printed at start-up '
    'names it).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the latest.')
_CACHE_LEN = flags.DEFINE_integer(
    'cache_len', 0, "Context in tokens (prompt + completion) of every request, the KV cache "
    "length; 0 = the model's max_len.")
_QUANTIZE = flags.DEFINE_enum(
    'quantize', 'none', ['none', 'int8'], 'Weight quantization: int8 keeps matmul weights as '
    'int8 with a float scale per output channel (about 4x less weight memory; '
    'docs/deployment.md).')
_SCHEDULER = flags.DEFINE_enum(
    'scheduler', 'continuous', ['continuous', 'static'], 'continuous: --max_batch decode slots '
    'that requests join and leave one by one; static: batches that run until their longest '
    'row ends (the old batcher, for comparison; no logprobs/echo).')
_MAX_BATCH = flags.DEFINE_integer(
    'max_batch', 8, 'Decode slots (continuous) or most prompts in one device batch (static).')
_BATCH_WAIT_MS = flags.DEFINE_float(
    'batch_wait_ms', 10.0, 'Static scheduler: how long the oldest waiting prompt waits for '
    'others to share its batch (milliseconds); 0 = run whatever is waiting at once.')
_STEPS_PER_CALL = flags.DEFINE_integer(
    'steps_per_call', 4, 'Continuous scheduler: decode steps per device dispatch when no '
    'request waits to join (fewer host round trips).')
_PREFILL_CHUNK = flags.DEFINE_integer(
    'prefill_chunk', 32, 'Continuous scheduler: prompt tokens prefilled per dispatch, '
    'between decode steps of the running requests.')
_PREFIX_CACHE_MB = flags.DEFINE_float(
    'prefix_cache_mb', 64.0, 'Continuous scheduler: MiB of device memory for the prefix '
    'cache, which keeps the K/V of prompt blocks (--prefill_chunk tokens each) and reuses them '
    'for later prompts that start the same way; least recently used blocks are evicted '
    'beyond it; 0 turns it off.')
_MAX_QUEUE = flags.DEFINE_integer(
    'max_queue', 256, 'Prompts that may wait for the scheduler; a request beyond it gets a 429.')
_TIMEOUT_S = flags.DEFINE_float(
    'timeout_s', 600.0, 'A request still running after this many seconds is cancelled (504).')
_DRAIN_S = flags.DEFINE_float(
    'drain_s', 30.0, 'On SIGTERM or Ctrl-C, how long requests in flight may take to finish '
    '(new ones get a 503 meanwhile).')
_WARMUP = flags.DEFINE_boolean(
    'warmup', True, 'Compile every batch shape (prompts up to 16 tokens) before serving, so '
    'that the first requests of each do not wait for it; --nowarmup (or --no-warmup) skips it.')
_API_KEY = flags.DEFINE_string(
    'api_key', None, 'Require "Authorization: Bearer KEY" on every request except /healthz; '
    'default: the LM_API_KEY environment variable, else no key.')
_MODEL_NAME = flags.DEFINE_string(
    'model_name', None, "The model name responses carry; default: the workdir's directory name.")
_LOG_LEVEL = flags.DEFINE_enum(
    'log_level', 'warning', ['critical', 'error', 'warning', 'info', 'debug'],
    'Server log level (info logs every request).')


def _check_flags() -> None:
  if not _WORKDIR.value:
    raise UserError('--workdir is required: the training workdir to serve')
  if not 0 <= _PORT.value <= 65535:
    raise UserError(f'--port={_PORT.value} is not a TCP port; give 0..65535 (0 = any free port)')
  if _MAX_BATCH.value < 1:
    raise UserError(f'--max_batch={_MAX_BATCH.value} must be >= 1')
  for flag in (_STEPS_PER_CALL, _PREFILL_CHUNK, _MAX_QUEUE):
    if flag.value < 1:
      raise UserError(f'--{flag.name}={flag.value} must be >= 1')
  for flag in (_TIMEOUT_S, _DRAIN_S):
    if not flag.value > 0:
      raise UserError(f'--{flag.name}={flag.value} must be > 0 (seconds)')
  if not _BATCH_WAIT_MS.value >= 0:
    raise UserError(f'--batch_wait_ms={_BATCH_WAIT_MS.value} must be >= 0')
  if not _PREFIX_CACHE_MB.value >= 0:
    raise UserError(f'--prefix_cache_mb={_PREFIX_CACHE_MB.value} must be >= 0 (0 = off)')
  if _CACHE_LEN.value < 0:
    raise UserError(f'--cache_len={_CACHE_LEN.value} must be >= 0 (0 = the model max_len)')
  if _STEP.value is not None and _STEP.value < 0:
    raise UserError(f'--step={_STEP.value} must be a checkpoint step (>= 0)')


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  _check_flags()
  check_trained(_WORKDIR.value)
  from lm.run import load_run  # jax, flax, orbax, fastapi: once the flags are checked
  from lm.serve import server
  sock = server.bind(_HOST.value, _PORT.value)  # a taken port fails now, not after loading
  try:
    run = load_run(_WORKDIR.value, _STEP.value, quantize=_QUANTIZE.value)
    api_key = _API_KEY.value if _API_KEY.value is not None else os.environ.get('LM_API_KEY')
    app_, batcher = server.build(
        run, cache_len=_CACHE_LEN.value, max_batch=_MAX_BATCH.value,
        batch_wait_s=_BATCH_WAIT_MS.value / 1000, api_key=api_key or None,
        model_name=_MODEL_NAME.value, warmup=_WARMUP.value, scheduler=_SCHEDULER.value,
        steps_per_call=_STEPS_PER_CALL.value, prefill_chunk=_PREFILL_CHUNK.value,
        max_queue=_MAX_QUEUE.value, timeout_s=_TIMEOUT_S.value,
        prefix_cache_mb=_PREFIX_CACHE_MB.value if _SCHEDULER.value == 'continuous' else 0,
        log=lambda s: print(s, flush=True))
  except BaseException:
    sock.close()
    raise
  sock.listen(1024)  # connections were refused until the model was ready
  print(f'lm.serve: {run.workdir} (checkpoint step {run.step}) at {server.url(sock)} '
        '(POST /v1/completions, /v1/chat/completions; Ctrl-C or SIGTERM drains and stops)',
        flush=True)
  server.serve(app_, batcher, sock, log_level=_LOG_LEVEL.value, drain_s=_DRAIN_S.value)
  print('lm.serve: stopped', flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, also taking argparse's --no-warmup (the spelling lm.serve had)."""
  return app.parse_flags_with_usage(['--nowarmup' if a == '--no-warmup' else a for a in argv])


def run() -> None:
  quiet = logging.ERROR  # orbax: a read-only manager is read-only
  if '--log_level=debug' in sys.argv:
    quiet = logging.INFO
  cli.run(main, flags_parser=_parse_flags, quiet_logs=quiet)


if __name__ == '__main__':
  run()
