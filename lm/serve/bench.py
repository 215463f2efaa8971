"""Load a running `lm.serve` server: `python -m lm.serve.bench --url=http://127.0.0.1:8000`.

Sends --requests completion requests from --concurrency client threads and prints the
requests/s, generated tokens/s, latency percentiles and the server's mean batch size
(from /metrics) over the run. The figures in docs/serving.md come from it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import re
import sys
import time
import urllib.parse


def _request(url: urllib.parse.SplitResult, method: str, path: str, body: dict | None,
             api_key: str | None) -> tuple[int, str]:
  conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
  headers = {'Content-Type': 'application/json'}
  if api_key:
    headers['Authorization'] = f'Bearer {api_key}'
  try:
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()
  finally:
    conn.close()


def _batch_stats(metrics: str) -> tuple[float, float]:
  """(batches, prompts) so far, from lm_serve_batch_size's _count and _sum."""
  def value(name):
    m = re.search(rf'^{name} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0
  return value('lm_serve_batch_size_count'), value('lm_serve_batch_size_sum')


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m lm.serve.bench', description=__doc__.split('\n')[0])
  p.add_argument('--url', default='http://127.0.0.1:8000', help='The server to load.')
  p.add_argument('--requests', type=int, default=64, help='Completion requests to send.')
  p.add_argument('--concurrency', type=int, default=16, help='Client threads sending them.')
  p.add_argument('--max_tokens', type=int, default=32, help='max_tokens of every request.')
  p.add_argument('--prompt', default='The ', help='Prompt of every request (request i '
                 'appends i, so the prompts differ).')
  p.add_argument('--temperature', type=float, default=0.0, help='temperature of every request.')
  p.add_argument('--api_key', default=None, help='Bearer key, if the server wants one.')
  args = p.parse_args(argv)
  if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
    p.error('--requests, --concurrency and --max_tokens must be >= 1')
  url = urllib.parse.urlsplit(args.url)

  def one(i: int) -> tuple[float, int]:
    start = time.perf_counter()
    body = {'prompt': f'{args.prompt}{i}', 'max_tokens': args.max_tokens,
            'temperature': args.temperature, 'seed': i % (1 << 32)}
    status, text = _request(url, 'POST', '/v1/completions', body, args.api_key)
    if status != 200:
      raise RuntimeError(f'request {i}: HTTP {status}: {text[:500]}')
    return time.perf_counter() - start, json.loads(text)['usage']['completion_tokens']

  try:
    one(-1)  # compiles the single-row shapes outside the timing
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
      list(pool.map(one, range(-args.concurrency, 0)))  # and the batched ones
    before = _batch_stats(_request(url, 'GET', '/metrics', None, args.api_key)[1])
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
      results = list(pool.map(one, range(args.requests)))
    seconds = time.perf_counter() - start
    after = _batch_stats(_request(url, 'GET', '/metrics', None, args.api_key)[1])
  except (OSError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  latencies = sorted(r[0] for r in results)
  tokens = sum(r[1] for r in results)
  batches, prompts = after[0] - before[0], after[1] - before[1]
  print(f'{args.requests} requests, concurrency {args.concurrency}, max_tokens '
        f'{args.max_tokens}: {seconds:.2f} s, {args.requests / seconds:.2f} requests/s, '
        f'{tokens / seconds:.1f} generated tokens/s; latency p50 '
        f'{latencies[len(latencies) // 2]:.3f} s, p90 {latencies[int(len(latencies) * 0.9)]:.3f}'
        f' s; mean batch {prompts / max(batches, 1):.2f} prompts')


if __name__ == '__main__':
  main()
