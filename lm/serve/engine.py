"""The continuous-batching scheduler: requests join and leave a fixed set of decode slots.

A thread loops over three kinds of device work (lm/infer/slots.py has the device side):

  admit    while a slot is free, the oldest waiting row starts its prefill (one at a time);
  prefill  one chunk of that prompt runs; after its last chunk the first token is sampled
           and the row is inserted into the free slot;
  decode   every occupied slot makes `steps_per_call` tokens in one dispatch (one token
           while a prefill is under way or a row waits for a free slot, so that it joins
           soon), and each row's tokens go through the same stop/length/streaming checks
           as the static batcher's (`_Progress`).

So a long prompt costs the running rows one decode pause per chunk rather than all of it,
and a short request does not wait for a long one to finish. A row leaves its slot the
moment it ends: its end-of-text token or token budget (seen on the device), a stop
string (seen here), a cancel (client gone). Slots rather than pages: the cache is one
[layers, slots, cache_len, K, H] array, every slot can hold the longest request, and
the model's decode (a scatter at each row's positions) needs no block table (see
docs/serving.md).

With a `prefix_cache` (prefix_cache.py), a prompt's full blocks of `chunk` tokens are
stored as they are prefilled, and a later prompt that starts with the same blocks gets
their K/V copied into its row; its chunked prefill starts at the first block not held
(at least its last token is always computed, for the logits of its first new token).
Rows with `echo` compute their whole prompt, for its log-probabilities.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from lm.errors import InputError
from lm.infer.sampling import SamplingConfig
from lm.infer.slots import SlotDecoder, empty_state
from lm.serve.batcher import Prompt, Row, Score, _Progress
from lm.serve.prefix_cache import PrefixCache, block_keys

log = logging.getLogger('lm.serve')
_GREEDY = SamplingConfig(temperature=0.0)


@dataclasses.dataclass(eq=False)
class _Prefill:
  """A row whose prompt is being prefilled, chunk by chunk, into a cache row of its own."""
  progress: _Progress
  row_cache: dict
  start: int = 0
  keys: list = dataclasses.field(default_factory=list)  # prefix-cache keys of its blocks
  scores: list = dataclasses.field(default_factory=list)  # (lp, top_lp, top_id) per chunk


def _score(token: int, lp: float, top_lp, top_id, k: int) -> Score:
  return Score(int(token), float(lp), tuple((int(i), float(p))
                                            for i, p in zip(top_id[:k], top_lp[:k], strict=True)))


class Engine:
  """Runs rows through `slots` (a SlotDecoder) on a background thread; the Batcher's API."""

  def __init__(self, slots: SlotDecoder, params, tokenizer, *, steps_per_call: int = 4,
               metrics=None, prefix_cache: PrefixCache | None = None):
    if steps_per_call < 1:
      raise InputError(f'steps_per_call={steps_per_call} must be >= 1')
    if prefix_cache is not None and prefix_cache.block != slots.chunk:
      raise InputError(f'prefix cache block={prefix_cache.block} must equal the prefill '
                       f'chunk={slots.chunk}')
    self.prefix_cache = prefix_cache
    self.slots, self.params, self.tokenizer, self.metrics = slots, params, tokenizer, metrics
    self.max_batch, self.steps_per_call = slots.slots, steps_per_call
    self._queue: collections.deque[Row] = collections.deque()
    self._cond = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name='lm-serve-engine', daemon=True)
    self._cache = None
    self._state = empty_state(slots.slots)
    self._running: list[_Progress | None] = [None] * slots.slots
    self._last_token_at = [0.0] * slots.slots
    self._prefill: _Prefill | None = None

  # ---- the Batcher's interface -------------------------------------------------------------

  def start(self) -> None:
    self._thread.start()

  def stop(self, timeout: float = 10.0) -> None:
    """Ends the thread after the current dispatch; rows queued or running get Failed."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    if self._thread.is_alive():
      self._thread.join(timeout)
    with self._cond:
      left, self._queue = list(self._queue), collections.deque()
    for p in [*(_Progress(r, self.tokenizer, self.tokenizer.eos_id) for r in left),
              *(p for p in self._running if p is not None),
              *([self._prefill.progress] if self._prefill else [])]:
      if not p.done:
        p.fail('the server is shutting down')

  def submit(self, rows: Sequence[Row]) -> None:
    with self._cond:
      if self._stopping:
        raise RuntimeError('the server is shutting down')
      self._queue.extend(rows)
      self._set_gauges()
      self._cond.notify_all()

  def queued(self) -> int:
    return len(self._queue)

  def busy(self) -> int:
    """Rows being prefilled or decoded."""
    return sum(p is not None for p in self._running) + (self._prefill is not None)

  def warm_up(self) -> list[int]:
    """Compiles the prefill chunk, the insert, and the 1- and k-step decode."""
    eos = self.tokenizer.eos_id
    row = Row([eos] * 2, 3, _GREEDY, 0, (), lambda event: None)
    if self._cache is None:
      self._cache = self.slots.new_cache()
    self._start_prefill(row)
    while self._prefill is not None:
      self._prefill_step()
    if self.prefix_cache is not None:  # compiles the block copies out and in
      scratch = self.slots.new_row()
      self.slots.write_block(scratch, self.slots.read_block(scratch, 0), 0)
    self._decode(1)
    self._decode(self.steps_per_call)
    for i, p in enumerate(self._running):  # the warm-up row, if it is still there
      if p is not None:
        self._free(i)
    return [self.max_batch]

  # ---- the scheduler thread ----------------------------------------------------------------

  def _loop(self) -> None:
    if self._cache is None:
      self._cache = self.slots.new_cache()
    while True:
      with self._cond:
        while (not self._stopping and not self._queue and self._prefill is None
               and not self._state['active'].any()):
          self._cond.wait()
        if self._stopping:
          return
        row = self._next_row() if self._prefill is None and self._free_slot() >= 0 else None
      try:
        if row is not None:
          self._start_prefill(row)
        if self._prefill is not None:
          self._prefill_step()
        self._drop_cancelled()
        if self._state['active'].any():
          waiting = self._prefill is not None or (self._queue and self._free_slot() >= 0)
          self._decode(1 if waiting else self.steps_per_call)
      except Exception as e:  # noqa: BLE001 - reported to the requests; the server goes on
        log.exception('generation failed')
        self._fail_all(f'generation failed: {type(e).__name__}: {e}')
      self._set_gauges()

  def _next_row(self) -> Row | None:
    while self._queue:
      row = self._queue.popleft()
      if not row.cancelled:
        return row
    return None

  def _free_slot(self) -> int:
    for i, p in enumerate(self._running):
      if p is None:
        return i
    return -1

  def _start_prefill(self, row: Row) -> None:
    progress = _Progress(row, self.tokenizer, self.tokenizer.eos_id)
    pf = self._prefill = _Prefill(progress, self.slots.new_row())
    cache = self.prefix_cache
    if cache is None:
      return
    pf.keys = block_keys(row.prompt_ids, self.slots.chunk)
    if row.echo:  # its prompt's log-probabilities need every position computed
      return
    usable = pf.keys[:(len(row.prompt_ids) - 1) // self.slots.chunk]  # keep the last token
    hits, misses = cache.hits, cache.misses
    for i, block in enumerate(cache.lookup(usable)):
      pf.row_cache = self.slots.write_block(pf.row_cache, block, i * self.slots.chunk)
      pf.start = (i + 1) * self.slots.chunk
    if self.metrics:
      self.metrics.prefix_cache_hits.inc(cache.hits - hits)
      self.metrics.prefix_cache_misses.inc(cache.misses - misses)

  def _prefill_step(self) -> None:
    pf = self._prefill
    row = pf.progress.row
    if row.cancelled:
      self._prefill = None
      return
    scores, last_V, pf.row_cache = self.slots.prefill_chunk(self.params, pf.row_cache,
                                                            row.prompt_ids, pf.start)
    block = pf.start // self.slots.chunk
    if block < len(pf.keys) and pf.keys[block] not in self.prefix_cache:
      evictions = self.prefix_cache.evictions
      self.prefix_cache.put(pf.keys[block], self.slots.read_block(pf.row_cache, pf.start))
      if self.metrics:
        self.metrics.prefix_cache_evictions.inc(self.prefix_cache.evictions - evictions)
    pf.start += self.slots.chunk
    if row.echo:
      pf.scores.append(scores)
    if last_V is None:
      return
    self._prefill = None
    progress = pf.progress
    if row.echo:
      self._emit_prompt(progress, pf.scores)
    if row.max_tokens == 0:
      progress._finish('', 'length')
      return
    token, lp, top_lp, top_id = self.slots.first_token(last_V, row.seed, row.sampling)
    self._observe_first(row)
    progress.add(token, _score(token, lp, top_lp, top_id, row.logprobs or 0))
    if progress.done:
      return
    slot = self._free_slot()
    self._cache = self.slots.insert(self._cache, pf.row_cache, slot)
    st = self._state
    st['tokens'][slot], st['positions'][slot], st['steps'][slot] = token, len(row.prompt_ids), 1
    st['left'][slot], st['active'][slot], st['seeds'][slot] = row.max_tokens - 1, True, row.seed
    st['temperature'][slot], st['top_k'][slot] = row.sampling.temperature, row.sampling.top_k
    st['top_p'][slot] = row.sampling.top_p
    self._running[slot] = progress
    self._last_token_at[slot] = time.monotonic()

  def _emit_prompt(self, progress: _Progress, chunks: list) -> None:
    row = progress.row
    lp = np.concatenate([c[0] for c in chunks])
    top_lp = np.concatenate([c[1] for c in chunks])
    top_id = np.concatenate([c[2] for c in chunks])
    k = row.logprobs or 0
    scores = []
    for j in range(row.echo_from, len(row.prompt_ids)):
      token = row.prompt_ids[j]
      if j == 0:
        scores.append(Score(token, None))
      else:
        scores.append(_score(token, lp[j - 1], top_lp[j - 1], top_id[j - 1], k))
    progress._emit(Prompt(tuple(scores)))

  def _decode(self, k: int) -> None:
    start, rows = time.perf_counter(), int(self._state['active'].sum())
    (tokens_KB, lp_KB, top_lp_KBT, top_id_KBT), self._state, self._cache = self.slots.steps(
        self.params, self._cache, self._state, k)
    now, made = time.monotonic(), 0
    for slot, progress in enumerate(self._running):
      if progress is None:
        continue
      new = 0
      for n in range(k):
        token = int(tokens_KB[n, slot])
        if token < 0 or progress.done or progress.row.cancelled:
          break
        progress.add(token, _score(token, lp_KB[n, slot], top_lp_KBT[n, slot],
                                   top_id_KBT[n, slot], progress.row.logprobs or 0))
        new += 1
      made += new
      if new and self.metrics:
        gap = (now - self._last_token_at[slot]) / new
        for _ in range(new):
          self.metrics.inter_token_seconds.observe(gap)
      self._last_token_at[slot] = now
      if progress.done or progress.row.cancelled or not self._state['active'][slot]:
        if not progress.done:  # ended on the device without _Progress noticing: cannot be
          progress.fail('the decode state and the row disagree about its end')
        self._free(slot)
    if self.metrics:
      seconds = time.perf_counter() - start
      self.metrics.generated_tokens.inc(made)
      self.metrics.generation_seconds.inc(seconds)
      if made and seconds > 0:
        self.metrics.tokens_per_second.set(made / seconds)
      self.metrics.batch_size.observe(rows)

  def _free(self, slot: int) -> None:
    self._running[slot] = None
    self._state['active'][slot] = False
    self._state['temperature'][slot] = 0.0  # a free slot never makes the batch sample

  def _drop_cancelled(self) -> None:
    for slot, progress in enumerate(self._running):
      if progress is not None and progress.row.cancelled:
        progress.done = True
        self._free(slot)

  def _fail_all(self, message: str) -> None:
    for slot, progress in enumerate(self._running):
      if progress is not None:
        progress.fail(message)
        self._free(slot)
    if self._prefill is not None:
      self._prefill.progress.fail(message)
      self._prefill = None
    self._cache = self.slots.new_cache()
    if self.prefix_cache is not None:  # what it holds may come from what just failed
      self.prefix_cache.clear()

  def _observe_first(self, row: Row) -> None:
    if self.metrics:
      self.metrics.time_to_first_token.observe(time.monotonic() - row.arrival)
      self.metrics.generated_tokens.inc()

  def _set_gauges(self) -> None:
    if self.metrics:
      self.metrics.queued_prompts.set(len(self._queue))
      self.metrics.slots_busy.set(sum(p is not None for p in self._running))
      if self.prefix_cache is not None:
        cache = self.prefix_cache
        self.metrics.prefix_cache_blocks.set(len(cache))
        self.metrics.prefix_cache_bytes.set(cache.bytes)
        looked = cache.hits + cache.misses
        self.metrics.prefix_cache_hit_rate.set(cache.hits / looked if looked else 0.0)
