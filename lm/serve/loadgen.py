"""An open-loop load generator for the server (the command is `python -m lm bench_serve`).

Requests arrive as a Poisson process of `rate` per second (exponential gaps, drawn ahead
from `seed`), each sent at its arrival time whether or not earlier ones have been answered
(open loop: a slow server sees its queue grow, as it would in service, rather than a
client that politely waits). Prompts are random token ids (no special ones) of a length
drawn uniformly from `prompt_tokens`, after an optional `shared_prefix` of tokens that
every prompt starts with; `max_tokens` is drawn uniformly from its range. Each request is
a streamed /v1/completions with stream_options.include_usage, so the client sees its time
to first token (the first streamed chunk) and its end-to-end latency, and the server's own
count of its tokens.

`start_server` runs `python -m lm serve` on 127.0.0.1 and a free port for a workdir, for a
benchmark that needs no server of its own.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np

from lm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Load:
  """The offered load: `requests` arrivals at `rate` per second."""
  rate: float
  requests: int
  prompt_tokens: tuple[int, int] = (8, 64)  # drawn uniformly, both ends included
  max_tokens: tuple[int, int] = (8, 64)
  shared_prefix: int = 0  # tokens every prompt starts with (before its own)
  temperature: float = 0.0
  seed: int = 0

  def check(self) -> None:
    problems = []
    if not self.rate > 0:
      problems.append(f'rate={self.rate} must be > 0 (requests per second)')
    if self.requests < 1:
      problems.append(f'requests={self.requests} must be >= 1')
    for name in ('prompt_tokens', 'max_tokens'):
      lo, hi = getattr(self, name)
      if not 1 <= lo <= hi:
        problems.append(f'{name}={lo},{hi} must be a range MIN,MAX with 1 <= MIN <= MAX')
    if self.shared_prefix < 0:
      problems.append(f'shared_prefix={self.shared_prefix} must be >= 0')
    if problems:
      raise UserError('; '.join(problems))


@dataclasses.dataclass(frozen=True)
class Planned:
  arrival_s: float  # after the start of the run
  prompt: list[int]
  max_tokens: int


@dataclasses.dataclass
class Result:
  ok: bool
  ttft_s: float | None = None
  latency_s: float | None = None
  prompt_tokens: int = 0
  completion_tokens: int = 0
  error: str = ''


def plan(load: Load, vocab_size: int, special: Sequence[int] = ()) -> list[Planned]:
  """The arrivals, prompts and lengths of a run (the same for the same load and vocab)."""
  load.check()
  rng = np.random.default_rng(load.seed)
  ids = np.setdiff1d(np.arange(vocab_size), np.asarray(special, np.int64))
  gaps = rng.exponential(1.0 / load.rate, load.requests)
  arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
  prefix = rng.choice(ids, load.shared_prefix).tolist()
  out = []
  for arrival in arrivals:
    n = int(rng.integers(load.prompt_tokens[0], load.prompt_tokens[1] + 1))
    out.append(Planned(float(arrival), prefix + rng.choice(ids, n).tolist(),
                       int(rng.integers(load.max_tokens[0], load.max_tokens[1] + 1))))
  return out


class Client:
  """Requests to one server URL, a fresh connection each (as independent clients)."""

  def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0):
    self.url = urllib.parse.urlsplit(url)
    if self.url.scheme != 'http' or not self.url.hostname:
      raise UserError(f'url={url!r} is not an http://HOST:PORT address of a server')
    self.headers = {'Content-Type': 'application/json'}
    if api_key:
      self.headers['Authorization'] = f'Bearer {api_key}'
    self.timeout_s = timeout_s

  def _conn(self) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(self.url.hostname, self.url.port or 80,
                                      timeout=self.timeout_s)

  def get_json(self, path: str) -> dict[str, Any]:
    conn = self._conn()
    try:
      conn.request('GET', path, headers=self.headers)
      resp = conn.getresponse()
      body = resp.read().decode()
      if resp.status != 200:
        raise UserError(f'GET {path} of {self.url.geturl()}: HTTP {resp.status}: {body[:300]}')
      return json.loads(body)
    except OSError as e:
      raise UserError(f'cannot reach the server at {self.url.geturl()} ({e}); start it or '
                      'give --url of one that runs') from e
    finally:
      conn.close()

  def complete(self, prompt: list[int], max_tokens: int, temperature: float, seed: int
               ) -> Result:
    """One streamed completion, timed from just before it is sent."""
    body = json.dumps({'prompt': prompt, 'max_tokens': max_tokens, 'temperature': temperature,
                       'seed': seed, 'stream': True,
                       'stream_options': {'include_usage': True}})
    start = time.perf_counter()
    conn = self._conn()
    try:
      conn.request('POST', '/v1/completions', body, self.headers)
      resp = conn.getresponse()
      if resp.status != 200:
        return Result(False, error=f'HTTP {resp.status}: {resp.read().decode()[:300]}')
      ttft, usage = None, None
      for line in resp:
        if not line.startswith(b'data: '):
          continue
        payload = line[len(b'data: '):].strip()
        if payload == b'[DONE]':
          break
        event = json.loads(payload)
        if 'error' in event:
          return Result(False, error=event['error'].get('message', 'stream error'))
        if event.get('choices') and ttft is None:
          ttft = time.perf_counter() - start
        if event.get('usage'):
          usage = event['usage']
      latency = time.perf_counter() - start
      if usage is None:
        return Result(False, error='the stream ended without its usage chunk')
      return Result(True, ttft, latency, usage['prompt_tokens'], usage['completion_tokens'])
    except (OSError, ValueError) as e:
      return Result(False, error=f'{type(e).__name__}: {e}')
    finally:
      conn.close()


def _percentiles(values: list[float]) -> dict[str, float | None]:
  if not values:
    return {'mean': None, 'p50': None, 'p99': None}
  a = np.asarray(values)
  return {'mean': float(a.mean()), 'p50': float(np.percentile(a, 50)),
          'p99': float(np.percentile(a, 99))}


def run(client: Client, load: Load, *, warmup: int = 2) -> dict[str, Any]:
  """Sends `warmup` requests one by one (not counted: first-request compiles), then the
  planned load; returns the report (see `table`)."""
  info = client.get_json('/tokenizer_info')
  special = [i for i in (info.get('bos_token_id'), info.get('eos_token_id')) if i is not None]
  planned = plan(load, int(info['vocab_size']), special)
  for p in planned[:warmup]:
    warm = client.complete(p.prompt, p.max_tokens, load.temperature, 1 << 31)
    if not warm.ok:
      raise UserError(f'a warm-up request failed: {warm.error}')
  results: list[Result | None] = [None] * len(planned)
  sent_at = [0.0] * len(planned)

  def send(i: int) -> None:
    p = planned[i]
    results[i] = client.complete(p.prompt, p.max_tokens, load.temperature, load.seed + i)

  threads = []
  start = time.perf_counter()
  for i, p in enumerate(planned):
    delay = start + p.arrival_s - time.perf_counter()
    if delay > 0:
      time.sleep(delay)
    sent_at[i] = time.perf_counter() - start
    t = threading.Thread(target=send, args=(i,), daemon=True)
    t.start()
    threads.append(t)
  for t in threads:
    t.join()
  seconds = time.perf_counter() - start
  done = [r for r in results if r is not None and r.ok]
  failed = [r for r in results if r is None or not r.ok]
  out_tokens = sum(r.completion_tokens for r in done)
  in_tokens = sum(r.prompt_tokens for r in done)
  return {
      'requests': len(planned), 'completed': len(done), 'failed': len(failed),
      'offered_rate': load.rate, 'sent_rate': len(planned) / max(sent_at[-1], 1e-9)
      if len(planned) > 1 else None,
      'duration_s': seconds, 'prompt_tokens': in_tokens, 'completion_tokens': out_tokens,
      'requests_per_s': len(done) / seconds, 'output_tokens_per_s': out_tokens / seconds,
      'total_tokens_per_s': (in_tokens + out_tokens) / seconds,
      'ttft_s': _percentiles([r.ttft_s for r in done if r.ttft_s is not None]),
      'latency_s': _percentiles([r.latency_s for r in done]),
      'per_request': [dataclasses.asdict(r) if r else None for r in results],
      'errors': sorted({r.error for r in failed if r})[:5],
      'load': dataclasses.asdict(load),
  }


def table(report: dict[str, Any]) -> str:
  """The report as a Markdown table."""
  def ms(v):
    return '-' if v is None else f'{v * 1000:.1f} ms'
  rows = [
      ('requests (completed / failed)',
       f"{report['requests']} ({report['completed']} / {report['failed']})"),
      ('offered rate', f"{report['offered_rate']:g} requests/s"),
      ('duration', f"{report['duration_s']:.2f} s"),
      ('throughput', f"{report['requests_per_s']:.2f} requests/s"),
      ('output tokens/s', f"{report['output_tokens_per_s']:.1f} "
                          f"({report['completion_tokens']} tokens)"),
      ('prompt + output tokens/s', f"{report['total_tokens_per_s']:.1f}"),
      ('TTFT p50 / p99 / mean', ' / '.join(ms(report['ttft_s'][k]) for k in ('p50', 'p99',
                                                                            'mean'))),
      ('latency p50 / p99 / mean', ' / '.join(ms(report['latency_s'][k])
                                              for k in ('p50', 'p99', 'mean'))),
  ]
  lines = ['| measure | value |', '| --- | --- |', *(f'| {a} | {b} |' for a, b in rows)]
  if report['errors']:
    lines.append(f"\nerrors: {'; '.join(report['errors'])}")
  return '\n'.join(lines)


class LocalServer:
  """`python -m lm serve --workdir=W --host=127.0.0.1 --port=0 FLAGS` as a subprocess;
  `url` once it listens; `stop` sends SIGINT (which drains) and waits."""

  def __init__(self, workdir: str, flags: Sequence[str] = (), *, log_path: str | None = None,
               timeout_s: float = 600.0):
    self.log_path = log_path or os.devnull
    self._log = open(self.log_path, 'w')  # noqa: SIM115 - closed by stop()
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'lm', 'serve', f'--workdir={workdir}', '--host=127.0.0.1',
         '--port=0', *flags], stdout=subprocess.PIPE, stderr=self._log, text=True)
    self.url = None
    deadline = time.monotonic() + timeout_s
    seen = []
    for line in self.proc.stdout:  # start-up prints the address once it listens
      seen.append(line)
      if m := re.search(r' at (http://127\.0\.0\.1:\d+) ', line):
        self.url = m.group(1)
        break
      if time.monotonic() > deadline:
        break
    if self.url is None:
      self.stop()
      raise UserError(f'the server for {workdir} did not start: {"".join(seen)[-2000:]}'
                      f'{"" if log_path else " (give --server_log to see its stderr)"}')
    threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain its output

  def stop(self) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()
    return self.proc.returncode
