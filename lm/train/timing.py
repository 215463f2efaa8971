"""Where a run's wall time went: start-up, data, compilation, training, eval, checkpoints, sample.

`Breakdown` times the loop's phases with (nestable) `phase(name)` blocks and, through jax's
monitoring events, the time jax spent tracing, lowering and compiling (or fetching from the
persistent compilation cache) wherever it happened; that time is moved out of the phase it
happened in into 'compile', so every second is counted once. What no phase covered is
'other'.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Iterator

from jax import monitoring

PHASES = ('startup', 'data', 'compile', 'train', 'eval', 'checkpoint', 'sample')
# jax's duration events of one compilation: tracing to a jaxpr, lowering to MLIR and the
# backend compile (which includes a persistent-cache lookup; a hit is fast).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
BACKEND_COMPILE = COMPILE_EVENTS[-1]
CACHE_HIT = '/jax/compilation_cache/cache_hits'


def process_start_time() -> float | None:
  """This process's start as a time.time() value (Linux /proc), else None."""
  try:
    with open('/proc/self/stat', encoding='ascii') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # field 22: starttime
    with open('/proc/stat', encoding='ascii') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime'))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return boot + ticks / os.sysconf('SC_CLK_TCK')


class CompileCounter:
  """Counts jax's compilations (and persistent-cache hits) and sums their seconds while
  active; a context manager, or start()/stop()."""

  def __init__(self):
    self.seconds = 0.0
    self.backend_compiles = 0  # programs handed to the backend (cache hits included)
    self.cache_hits = 0

  @property
  def compiled(self) -> int:
    """Programs compiled from scratch (not found in the persistent cache)."""
    return self.backend_compiles - self.cache_hits

  def start(self) -> CompileCounter:
    _listen()
    _ACTIVE.add(self)
    return self

  def stop(self) -> None:
    _ACTIVE.discard(self)

  def __enter__(self) -> CompileCounter:
    return self.start()

  def __exit__(self, *exc: object) -> None:
    self.stop()


# One pair of listeners for every active counter (a counter never stopped is dropped when
# it is garbage collected).
_ACTIVE: weakref.WeakSet[CompileCounter] = weakref.WeakSet()
_LISTENING = False


def _on_duration(event: str, seconds: float, **_) -> None:
  if event in COMPILE_EVENTS:
    for counter in list(_ACTIVE):
      counter.seconds += seconds
      counter.backend_compiles += event == BACKEND_COMPILE


def _on_event(event: str, **_) -> None:
  if event == CACHE_HIT:
    for counter in list(_ACTIVE):
      counter.cache_hits += 1


def _listen() -> None:
  global _LISTENING
  if not _LISTENING:
    monitoring.register_event_duration_secs_listener(_on_duration)
    monitoring.register_event_listener(_on_event)
    _LISTENING = True


class Breakdown:
  """Seconds per phase of one run, from `started_at` (a time.time() value: the process
  start for a command; default: now) to `finish()`."""

  def __init__(self, started_at: float | None = None):
    now_wall, self._t0 = time.time(), time.perf_counter()
    # Before this object existed (imports, for a command): counted as start-up.
    self.before = max(now_wall - started_at, 0.0) if started_at is not None else 0.0
    self.seconds = dict.fromkeys(PHASES, 0.0)
    self.seconds['startup'] = self.before
    self.compiles = CompileCounter().start()
    self._stack: list[list[float]] = []
    self.wall: float | None = None

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Times the block as `name`, less the compilation and the nested phases inside it."""
    t, c = time.perf_counter(), self.compiles.seconds
    self._stack.append([0.0, 0.0])  # (seconds, compile seconds) of nested phases
    try:
      yield
    finally:
      nested, nested_compile = self._stack.pop()
      elapsed, compiling = time.perf_counter() - t, self.compiles.seconds - c
      self.seconds[name] += elapsed - nested - (compiling - nested_compile)
      if self._stack:
        self._stack[-1][0] += elapsed
        self._stack[-1][1] += compiling

  def finish(self) -> dict[str, float]:
    """Stops counting; returns {'time/<phase>_s': ..., 'time/other_s', 'time/wall_s',
    'time/compiled_programs', 'time/cache_hits'}."""
    if self.wall is None:
      self.wall = self.before + time.perf_counter() - self._t0
      self.compiles.stop()
    return self.row()

  def row(self) -> dict[str, float]:
    wall = self.wall if self.wall is not None else self.before + time.perf_counter() - self._t0
    row = {f'time/{k}_s': v for k, v in self.seconds.items()}
    row['time/compile_s'] = self.compiles.seconds  # wherever it happened
    row['time/other_s'] = wall - sum(row[f'time/{k}_s'] for k in PHASES)
    row['time/wall_s'] = wall
    row['time/compiled_programs'] = float(self.compiles.compiled)
    row['time/cache_hits'] = float(self.compiles.cache_hits)
    return row

  def table(self) -> str:
    """The breakdown as one log line per phase, with its share of the wall time."""
    row = self.row()
    wall = max(row['time/wall_s'], 1e-9)
    lines = [f'time: {wall:.1f} s wall ({self.compiles.compiled} programs compiled, '
             f'{self.compiles.cache_hits} from the compilation cache)']
    for k in (*PHASES, 'other'):
      s = row[f'time/{k}_s']
      lines.append(f'  {k:<11}{s:8.2f} s  {100 * s / wall:5.1f}%')
    return '\n'.join(lines)
