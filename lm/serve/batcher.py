"""The scheduler: prompts waiting for the device are run together, one batch at a time.

A thread takes up to `max_batch` queued prompts (waiting at most `batch_wait_s` after the
oldest one arrived for more to come) and runs them as one `Decoder.stream` call. Each row
has its own sampling settings and seed (`RowSampling`), so requests with different
settings share a batch and a seeded request's text does not depend on its batch-mates.
Rows end on their own (max_tokens, a stop string, the end-of-text token); the batch ends
when its last row does. Every new piece of text goes to the row's `on_event` callback as
it is produced, so streamed responses see tokens as the batch makes them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from lm.errors import InputError
from lm.infer.sampling import RowSampling, SamplingConfig

log = logging.getLogger('lm.serve')

_FILLER = SamplingConfig(temperature=0.0)  # settings of the rows that pad a batch


@dataclasses.dataclass(frozen=True)
class Score:
  """A token and its log-probability, with the most likely alternatives (id, logprob)
  at its position (None for a prompt's first token, which nothing predicts)."""
  token: int
  logprob: float | None
  top: tuple[tuple[int, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class Text:
  """More text of a row (never retracted; the concatenation is the final text), and the
  scores of the tokens made since the last event (when the row asked for logprobs)."""
  text: str
  scores: tuple[Score, ...] = ()


@dataclasses.dataclass(frozen=True)
class Finished:
  """A row's end: the last piece of text, why it ended ('stop' | 'length'), tokens made,
  and the scores of the tokens not yet sent (through the one that completed a stop)."""
  text: str
  finish_reason: str
  completion_tokens: int
  scores: tuple[Score, ...] = ()


@dataclasses.dataclass(frozen=True)
class Prompt:
  """The scores of a row's prompt tokens (sent first, when the row asked for echo)."""
  scores: tuple[Score, ...]


@dataclasses.dataclass(frozen=True)
class Failed:
  """Generation raised; the row ends without a result."""
  message: str


Event = Text | Finished | Failed | Prompt


@dataclasses.dataclass(eq=False)
class Row:
  """One prompt of a request. `on_event` is called from the scheduler thread."""

  prompt_ids: list[int]
  max_tokens: int
  sampling: SamplingConfig
  seed: int
  stops: tuple[str, ...]
  on_event: Callable[[Event], None]
  cancelled: bool = False  # set by the HTTP side when the client has gone
  logprobs: int | None = None  # alternatives per token to report (None = no scores)
  echo: bool = False  # report the prompt's scores (the continuous engine only)
  echo_from: int = 0  # prompt_ids[:echo_from] (a bos the server added) are not echoed
  arrival: float = dataclasses.field(default_factory=time.monotonic)


class _Progress:
  """A running row: its tokens, the text already sent, and the stop/length checks."""

  def __init__(self, row: Row, tokenizer, eos_id: int):
    self.row, self.tokenizer, self.eos_id = row, tokenizer, eos_id
    self.tokens: list[int] = []
    self.scores: list[Score] = []
    self.scores_sent = 0
    self.sent = ''
    self.done = False

  def add(self, token: int, score: Score | None = None) -> None:
    self.tokens.append(token)
    if score is not None and self.row.logprobs is not None:
      self.scores.append(score)
    text = self.tokenizer.decode(self.tokens)
    cuts = [text.find(s) for s in self.row.stops if s in text]
    if cuts:
      self._finish(text[:min(cuts)], 'stop')
    elif token == self.eos_id:
      self._finish(text, 'stop')
    elif len(self.tokens) >= self.row.max_tokens:
      self._finish(text, 'length')
    else:
      end = self._safe_end(text)
      if end > len(self.sent) and text.startswith(self.sent):
        self._emit(Text(text[len(self.sent):end], self._new_scores()))
        self.sent = text[:end]

  def _new_scores(self) -> tuple[Score, ...]:
    new = tuple(self.scores[self.scores_sent:])
    self.scores_sent = len(self.scores)
    return new

  def _safe_end(self, text: str) -> int:
    """How much of `text` can be sent: not a trailing partial UTF-8 character (decoded as
    U+FFFD), nor a tail that may yet grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == '\ufffd':
      end -= 1
    hold = 0
    for stop in self.row.stops:
      for k in range(min(len(stop) - 1, end), hold, -1):
        if text[end - k:end] == stop[:k]:
          hold = k
          break
    return end - hold

  def _finish(self, text: str, reason: str) -> None:
    self.done = True
    if not text.startswith(self.sent):  # a tokenizer whose decode of a prefix changed
      log.warning('streamed text %r is not a prefix of the final text %r', self.sent, text)
    rest = text[len(self.sent):] if text.startswith(self.sent) else ''
    self._emit(Finished(rest, reason, len(self.tokens), self._new_scores()))

  def fail(self, message: str) -> None:
    self.done = True
    self._emit(Failed(message))

  def _emit(self, event: Event) -> None:
    try:
      self.row.on_event(event)
    except Exception:  # a closed event loop must not stop the batch's other rows
      log.exception('delivering %s failed', type(event).__name__)


def batch_bucket(rows: int, max_batch: int) -> int:
  """Rows a batch of `rows` prompts is padded to: the next power of two (at most
  max_batch), so a few batch shapes are compiled rather than every size."""
  return min(max_batch, 1 << (rows - 1).bit_length())


class Batcher:
  """Runs queued rows through `decoder` in batches on a background thread."""

  def __init__(self, decoder, params, tokenizer, *, max_batch: int, batch_wait_s: float,
               metrics=None):
    if max_batch < 1:
      raise InputError(f'max_batch={max_batch} must be >= 1')
    if batch_wait_s < 0:
      raise InputError(f'batch_wait_s={batch_wait_s} must be >= 0')
    self.decoder, self.params, self.tokenizer = decoder, params, tokenizer
    self.max_batch, self.batch_wait_s, self.metrics = max_batch, batch_wait_s, metrics
    self._queue: collections.deque[Row] = collections.deque()
    self._cond = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name='lm-serve-batcher', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self, timeout: float = 10.0) -> None:
    """Ends the thread after the current step; rows still queued or running get Failed."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    if self._thread.is_alive():
      self._thread.join(timeout)
    with self._cond:
      left, self._queue = list(self._queue), collections.deque()
    for row in left:
      _Progress(row, self.tokenizer, self.tokenizer.eos_id).fail('the server is shutting down')

  def warm_up(self) -> list[int]:
    """Compiles the prefill (for prompts of up to 16 tokens) and the step of every batch
    shape the server uses, so that traffic does not wait for them; returns those sizes."""
    sizes = sorted({batch_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
    eos_id = self.tokenizer.eos_id
    for size in sizes:
      sampling = RowSampling((_FILLER,) * size, (0,) * size)
      for _ in self.decoder.stream(self.params, [[eos_id]] * size, max_new_tokens=2,
                                   sampling=sampling):
        pass
    return sizes

  def queued(self) -> int:
    """Rows waiting for a batch."""
    return len(self._queue)

  def submit(self, rows: Sequence[Row]) -> None:
    with self._cond:
      if self._stopping:
        raise RuntimeError('the server is shutting down')
      self._queue.extend(rows)
      self._set_queue_metric()
      self._cond.notify_all()

  # ---- the scheduler thread ----------------------------------------------------------------

  def _loop(self) -> None:
    while True:
      batch = self._take_batch()
      if batch is None:
        return
      if batch:
        self._run(batch)

  def _fits(self, longest_prompt: int, most_tokens: int) -> bool:
    try:
      self.decoder.cache_len_for(longest_prompt, most_tokens)
      return True
    except InputError:
      return False

  def _take_batch(self) -> list[Row] | None:
    """The next batch (oldest first), or None once stopping."""
    with self._cond:
      while not self._queue and not self._stopping:
        self._cond.wait()
      if self._stopping:
        return None
      deadline = self._queue[0].arrival + self.batch_wait_s
      while len(self._queue) < self.max_batch and not self._stopping:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cond.wait(left)
      batch: list[Row] = []
      waiting: collections.deque[Row] = collections.deque()
      longest = most = 0
      for row in self._queue:
        if row.cancelled:
          continue
        # Every row fits alone (the app checks); a row that does not fit with this batch's
        # longest prompt and longest continuation waits for the next batch.
        if len(batch) < self.max_batch and self._fits(max(longest, len(row.prompt_ids)),
                                                       max(most, row.max_tokens)):
          batch.append(row)
          longest, most = max(longest, len(row.prompt_ids)), max(most, row.max_tokens)
        else:
          waiting.append(row)
      self._queue = waiting
      self._set_queue_metric()
      return batch

  def _run(self, rows: list[Row]) -> None:
    eos_id = self.tokenizer.eos_id
    progress = [_Progress(r, self.tokenizer, eos_id) for r in rows]
    size = batch_bucket(len(rows), self.max_batch)
    filler = size - len(rows)
    prompts = [r.prompt_ids for r in rows] + [[eos_id]] * filler
    sampling = RowSampling(tuple(r.sampling for r in rows) + (_FILLER,) * filler,
                           tuple(r.seed for r in rows) + (0,) * filler)
    if self.metrics:
      self.metrics.batch_size.observe(len(rows))
    start, made = time.perf_counter(), 0
    steps = None
    try:
      steps = self.decoder.stream(self.params, prompts,
                                  max_new_tokens=max(r.max_tokens for r in rows),
                                  sampling=sampling)
      for step_B in steps:
        for i, p in enumerate(progress):
          if p.done:
            continue
          if p.row.cancelled:
            p.done = True
            continue
          p.add(int(step_B[i]))
          made += 1
        if all(p.done for p in progress) or self._stopping:
          break
      for p in progress:  # only when stopping
        if not p.done:
          p.fail('the server is shutting down')
    except Exception as e:  # noqa: BLE001 - reported to the requests; the server goes on
      log.exception('generation failed for a batch of %d prompts', len(rows))
      for p in progress:
        if not p.done:
          p.fail(f'generation failed: {type(e).__name__}: {e}')
    finally:
      if steps is not None:
        steps.close()
      if self.metrics:
        seconds = time.perf_counter() - start
        self.metrics.generated_tokens.inc(made)
        self.metrics.generation_seconds.inc(seconds)
        if made and seconds > 0:
          self.metrics.tokens_per_second.set(made / seconds)

  def _set_queue_metric(self) -> None:
    if self.metrics:
      self.metrics.queued_prompts.set(len(self._queue))
