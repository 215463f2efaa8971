"""Load a server open-loop: `python -m lm bench_serve --url=http://127.0.0.1:8000 --rate=4`.

Sends --requests streamed completions whose arrivals are a Poisson process of --rate per
second (each sent at its time, answered or not), with prompt and output lengths drawn
uniformly from --prompt_tokens and --max_tokens, and reports requests/s, tokens/s and the
p50/p99 time to first token and end-to-end latency as a table (or --json). With --workdir
instead of --url it starts `python -m lm serve` for that run on 127.0.0.1 (with
--server_flags) and stops it afterwards. The library half is lm/serve/loadgen.py.
"""

from __future__ import annotations

import json
import os

from absl import flags

from lm import cli
from lm.errors import UserError
from lm.serve import loadgen

_URL = flags.DEFINE_string('url', None, 'The server to load (http://HOST:PORT); or --workdir.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Start `python -m lm serve` for this run on 127.0.0.1 and a free port, '
    'load it, and stop it; instead of --url.')
_SERVER_FLAGS = flags.DEFINE_list(
    'server_flags', [], 'With --workdir: flags of the server it starts, comma-separated, e.g. '
    '--server_flags=--scheduler=static,--max_batch=16.')
_SERVER_LOG = flags.DEFINE_string('server_log', None, 'With --workdir: file for the '
                                  "server's stderr (default: discarded).")
_RATE = flags.DEFINE_float('rate', 4.0, 'Mean arrivals per second (Poisson process).')
_REQUESTS = flags.DEFINE_integer('requests', 64, 'Requests to send (after the warm-up).')
_PROMPT_TOKENS = flags.DEFINE_list(
    'prompt_tokens', ['8', '64'], 'MIN,MAX: prompt tokens of each request (random ids, after '
    'the shared prefix), drawn uniformly.')
_MAX_TOKENS = flags.DEFINE_list('max_tokens', ['8', '64'], 'MIN,MAX: max_tokens of each '
                                'request, drawn uniformly.')
_SHARED_PREFIX = flags.DEFINE_integer(
    'shared_prefix', 0, 'Tokens every prompt starts with (the same ones; a system prompt), '
    'which a prefix cache can reuse.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'temperature of every request (0 = '
                                  'greedy).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the arrivals, prompts and lengths (and of '
                             'request i\'s sampling: seed + i).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Requests sent one by one before the load, not '
                               'counted (they absorb first-request compiles).')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 1, 'Send the same load this many times, one after another, to the same server '
    'and report each round (a later round runs on shapes the first one compiled).')
_API_KEY = flags.DEFINE_string('api_key', None, 'Bearer key, if the server wants one; '
                               'default: the LM_API_KEY environment variable.')
_TIMEOUT_S = flags.DEFINE_float('timeout_s', 600.0, 'Client timeout of each request, seconds.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as one JSON object (with every '
                          "request's figures) instead of the table.")


def _range(flag) -> tuple[int, int]:
  try:
    lo, hi = (int(v) for v in flag.value)
  except ValueError:
    raise UserError(f'--{flag.name}={",".join(flag.value)} must be MIN,MAX (two integers)'
                    ) from None
  return lo, hi


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if bool(_URL.value) == bool(_WORKDIR.value):
    raise UserError('give exactly one of --url (a running server) and --workdir (a run to '
                    'serve for the benchmark)')
  load = loadgen.Load(rate=_RATE.value, requests=_REQUESTS.value,
                      prompt_tokens=_range(_PROMPT_TOKENS), max_tokens=_range(_MAX_TOKENS),
                      shared_prefix=_SHARED_PREFIX.value, temperature=_TEMPERATURE.value,
                      seed=_SEED.value)
  load.check()
  if _WARMUP.value < 0:
    raise UserError(f'--warmup={_WARMUP.value} must be >= 0')
  if _ROUNDS.value < 1:
    raise UserError(f'--rounds={_ROUNDS.value} must be >= 1')
  api_key = _API_KEY.value if _API_KEY.value is not None else os.environ.get('LM_API_KEY')
  server = None
  if _WORKDIR.value:
    server = loadgen.LocalServer(_WORKDIR.value, _SERVER_FLAGS.value,
                                 log_path=_SERVER_LOG.value)
  try:
    client = loadgen.Client(server.url if server else _URL.value, api_key, _TIMEOUT_S.value)
    reports = [loadgen.run(client, load, warmup=_WARMUP.value if r == 0 else 0)
               for r in range(_ROUNDS.value)]
  finally:
    if server is not None:
      server.stop()
  if _JSON.value:
    print(json.dumps(reports[0] if len(reports) == 1 else reports))
  else:
    for r, report in enumerate(reports):
      print(f'round {r + 1} of {len(reports)}:\n' if len(reports) > 1 else '', end='')
      print(loadgen.table(report))


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
