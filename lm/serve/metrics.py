"""Prometheus metrics of the server, in a registry of their own (GET /metrics)."""

from __future__ import annotations

from prometheus_client import (
  CONTENT_TYPE_LATEST,
  CollectorRegistry,
  Counter,
  Gauge,
  Histogram,
  generate_latest,
)

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
  """Requests by path and status, errors by kind, latency, tokens, batch sizes."""

  content_type = CONTENT_TYPE_LATEST

  def __init__(self):
    self.registry = r = CollectorRegistry()
    self.requests = Counter('lm_serve_requests', 'HTTP requests to the API by path and status',
                            ['path', 'status'], registry=r)
    self.errors = Counter(
        'lm_serve_errors', 'Requests that failed, by kind: invalid_request (4xx), '
        'authentication (401), generation (500)', ['kind'], registry=r)
    self.latency = Histogram(
        'lm_serve_request_latency_seconds', 'Completion requests: arrival to last token',
        buckets=LATENCY_BUCKETS_S, registry=r)
    self.prompt_tokens = Counter('lm_serve_prompt_tokens', 'Prompt tokens of accepted requests',
                                 registry=r)
    self.generated_tokens = Counter('lm_serve_generated_tokens', 'Tokens generated', registry=r)
    self.generation_seconds = Counter(
        'lm_serve_generation_seconds', 'Time spent running batches on the device', registry=r)
    self.tokens_per_second = Gauge(
        'lm_serve_tokens_per_second', 'Generated tokens per second of the last batch (all its '
        'rows together)', registry=r)
    self.batch_size = Histogram('lm_serve_batch_size', 'Prompts per device batch',
                                buckets=BATCH_BUCKETS, registry=r)
    self.queued_prompts = Gauge('lm_serve_queued_prompts', 'Prompts waiting for a batch',
                                registry=r)

    self.time_to_first_token = Histogram(
        'lm_serve_time_to_first_token_seconds', 'Rows: arrival to their first generated token',
        buckets=LATENCY_BUCKETS_S, registry=r)
    self.inter_token_seconds = Histogram(
        'lm_serve_inter_token_seconds', 'Time between consecutive tokens of a row (a dispatch '
        'of k steps counts as k equal gaps)', buckets=TOKEN_BUCKETS_S, registry=r)
    self.slots_busy = Gauge('lm_serve_slots_busy', 'Decode slots holding a row (continuous '
                            'batching)', registry=r)
    self.slots_total = Gauge('lm_serve_slots', 'Decode slots (continuous batching)', registry=r)
    self.rejected = Counter('lm_serve_rejected', 'Requests refused before queueing, by reason '
                            '(queue_full 429, draining 503)', ['reason'], registry=r)

    self.prefix_cache_hits = Counter(
        'lm_serve_prefix_cache_hits', 'Prompt blocks whose K/V came from the prefix cache',
        registry=r)
    self.prefix_cache_misses = Counter(
        'lm_serve_prefix_cache_misses', 'Full prompt blocks looked up and not held (computed)',
        registry=r)
    self.prefix_cache_evictions = Counter(
        'lm_serve_prefix_cache_evictions', 'Blocks dropped (least recently used) to make room',
        registry=r)
    self.prefix_cache_hit_rate = Gauge(
        'lm_serve_prefix_cache_hit_rate', 'hits / (hits + misses) since start', registry=r)
    self.prefix_cache_blocks = Gauge('lm_serve_prefix_cache_blocks', 'Blocks held',
                                     registry=r)
    self.prefix_cache_bytes = Gauge('lm_serve_prefix_cache_bytes', 'Bytes of K/V held',
                                    registry=r)

  def render(self) -> bytes:
    return generate_latest(self.registry)
