"""KV-cache generation: one prefill forward over the prompts, then one jit'd step per token.

The cache is {'k', 'v'}: [layers, B, S, K, H], stacked per layer like the parameters.
Slot s of a row holds that row's position s, so prompts of different lengths are
right-padded: row b's prompt fills slots 0..L_b-1 (prefill also writes the padding after
it, which no real token attends to), and its n-th new token is fed at position L_b + n,
overwriting that padding before anything reads it. Positions (RoPE or learned) are
therefore exactly those of the row alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import InputError
from lm.infer.sampling import SamplingConfig, sample
from lm.infer.sharding import cache_sharding
from lm.model import ModelConfig, ModelDef
from lm.parallel import use_rules

PREFILL_BUCKET = 16  # prompts are padded to a multiple of this: fewer distinct compiles
ROPE_CACHE_BUCKET = 64
DEFAULT_SAMPLING = SamplingConfig()  # the sampling a request gets when it names none


def init_cache(cfg: ModelConfig, batch: int, cache_len: int) -> dict[str, jax.Array]:
  """An empty KV cache {'k', 'v'}: [layers, batch, cache_len, kv_heads, head_dim]."""
  shape = (cfg.num_layers, batch, cache_len, cfg.num_kv_heads, cfg.head_dim)
  return {'k': jnp.zeros(shape, cfg.jnp_dtype), 'v': jnp.zeros(shape, cfg.jnp_dtype)}


def _ends_with(tokens: list[int], stops: Sequence[Sequence[int]]) -> int:
  """Length of the first stop sequence `tokens` ends with, else 0."""
  for stop in stops:
    if stop and len(tokens) >= len(stop) and tokens[-len(stop):] == list(stop):
      return len(stop)
  return 0


def _collect(steps: Iterator[np.ndarray], batch: int) -> list[list[int]]:
  """Each row's tokens from a `Decoder.stream` (dropping the -1 of finished rows)."""
  out: list[list[int]] = [[] for _ in range(batch)]
  for step_B in steps:
    for i, t in enumerate(step_B):
      if t >= 0:
        out[i].append(int(t))
  return out


class Decoder:
  """Jit-compiled prefill and decode step for one model; build once, generate many times.

  `cache_len` fixes the KV cache length (and so the longest prompt + continuation);
  by default it is the model's max_len, or for RoPE models whatever a request needs.
  With a `mesh` (and the config's `rules`), params placed by `lm.run.load_run(..., mesh=mesh)`
  (or `lm.run.place_params`) and the cache are split over it (tensor parallelism).
  """

  def __init__(self, model_def: ModelDef, *, cache_len: int | None = None, mesh=None,
               rules=()):
    cfg = model_def.cfg
    if cache_len is not None and cache_len < 1:
      raise InputError(f'cache_len={cache_len} must be >= 1')
    if cache_len is not None and cfg.position == 'learned' and cache_len > cfg.max_len:
      raise InputError(f'cache_len={cache_len} exceeds the model max_len={cfg.max_len}, the '
                       'size of its learned position table')
    self.model_def, self.cfg, self.cache_len = model_def, cfg, cache_len
    self.mesh, self.rules = mesh, rules
    donate = () if jax.default_backend() == 'cpu' else (3,)  # the cache, updated in place
    self._prefill = jax.jit(self._prefill_fn, donate_argnums=donate)
    self._step = jax.jit(self._step_fn, donate_argnums=donate)

  # ---- the jit'd pieces -------------------------------------------------------------------

  def _prefill_fn(self, params, tokens_BP, lengths_B, cache, key, sampling):
    b, p = tokens_BP.shape
    positions_BP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    with self._rules():
      logits_BPV, cache = self.model_def.merge(params).decode(tokens_BP, positions_BP, cache)
    last_BV = logits_BPV[jnp.arange(b), lengths_B - 1]
    return sample(last_BV, key, **sampling), cache

  def _step_fn(self, params, tokens_B, positions_B, cache, key, n, sampling):
    """Token n of every row (fed the token before it at positions_B), the next positions
    and the cache. The key is folded here, not on the host: one dispatch per token."""
    with self._rules():
      logits_B1V, cache = self.model_def.merge(params).decode(
          tokens_B[:, None], positions_B[:, None], cache)
    token_B = sample(logits_B1V[:, 0], jax.random.fold_in(key, n), **sampling)
    return token_B, positions_B + 1, cache

  def _rules(self):
    """The model's sharding constraints are active only when decoding on a mesh."""
    return use_rules(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()

  def new_cache(self, batch: int, cache_len: int) -> dict[str, jax.Array]:
    """An empty cache, split over the mesh when there is one."""
    cache = init_cache(self.cfg, batch, cache_len)
    if self.mesh is None:
      return cache
    return jax.device_put(cache, cache_sharding(self.mesh, self.rules, cache['k'].shape))

  # ---- requests ---------------------------------------------------------------------------

  def cache_len_for(self, prompt_len: int, max_new_tokens: int) -> int:
    """The cache length a request needs; InputError when it exceeds the allowed length."""
    cfg, need = self.cfg, prompt_len + max_new_tokens
    if self.cache_len is not None:
      limit, what = self.cache_len, f'the configured cache length {self.cache_len}'
    elif cfg.position == 'learned':
      limit, what = cfg.max_len, f'the model max_len {cfg.max_len} (learned positions)'
    else:  # RoPE has no table to run off the end of
      return max(cfg.max_len, -(-need // ROPE_CACHE_BUCKET) * ROPE_CACHE_BUCKET)
    if need > limit:
      raise InputError(f'prompt length {prompt_len} + max_new_tokens {max_new_tokens} = {need} '
                       f'exceeds {what}; shorten the prompt or ask for fewer tokens')
    return limit

  def stream(self, params: dict, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingConfig = DEFAULT_SAMPLING, seed: int = 0,
             stop_tokens: Sequence[Sequence[int]] = (), stop_texts: Sequence[str] = (),
             detokenize: Callable[[list[int]], str] | None = None) -> Iterator[np.ndarray]:
    """Yields, per step, the new token of every row ([B] int32; -1 for a finished row).

    A row finishes after max_new_tokens or once its continuation ends with one of
    `stop_tokens` or its text (`detokenize` of the continuation) contains one of
    `stop_texts`; the stopping tokens are yielded. Same seed, same tokens.
    """
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
      raise InputError('no prompts given')
    if max_new_tokens < 1:
      raise InputError(f'max_new_tokens={max_new_tokens} must be >= 1')
    for i, p in enumerate(prompts):
      if not p:
        raise InputError(f'prompt {i} is empty; give at least one token')
      if min(p) < 0 or max(p) >= self.cfg.vocab_size:
        raise InputError(f'prompt {i} holds token ids outside [0, {self.cfg.vocab_size})')
    if stop_texts and detokenize is None:
      raise InputError('stop_texts need a detokenize function (e.g. tokenizer.decode)')
    b, longest = len(prompts), max(map(len, prompts))
    cache_len = self.cache_len_for(longest, max_new_tokens)
    padded = min(cache_len, -(-longest // PREFILL_BUCKET) * PREFILL_BUCKET)
    tokens_BP = np.zeros((b, padded), np.int32)
    for i, p in enumerate(prompts):
      tokens_BP[i, :len(p)] = p
    lengths_B = np.array([len(p) for p in prompts], np.int32)

    key = jax.random.key(seed)
    knobs = sampling.as_arrays()
    cache = self.new_cache(b, cache_len)
    token_B, cache = self._prefill(params, tokens_BP, lengths_B, cache,
                                   jax.random.fold_in(key, 0), knobs)
    # Placed as the step's own outputs are, so that its first call compiles the program
    # every later call runs (a host array here compiled the step twice per generation).
    positions_B = jax.device_put(lengths_B, token_B.sharding)
    generated: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    for n in range(max_new_tokens):
      # Step n + 1 is dispatched before token n is read back, so the device computes it
      # while the host checks stops (one step is wasted when every row stops at n).
      ahead = (self._step(params, token_B, positions_B, cache, key, np.int32(n + 1), knobs)
               if n + 1 < max_new_tokens else None)
      host_B = np.asarray(token_B)
      out_B = np.where(done, -1, host_B).astype(np.int32)
      for i in np.flatnonzero(~done):
        generated[i].append(int(host_B[i]))
        if _ends_with(generated[i], stop_tokens) or (
            stop_texts and any(s in detokenize(generated[i]) for s in stop_texts)):
          done[i] = True
      yield out_B
      if done.all():
        return
      if ahead is not None:
        token_B, positions_B, cache = ahead

  def generate(self, params: dict, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               sampling: SamplingConfig = DEFAULT_SAMPLING, seed: int = 0,
               stop_tokens: Sequence[Sequence[int]] = ()) -> list[list[int]]:
    """The continuation of every prompt, without a stop sequence it ended on."""
    out = _collect(self.stream(params, prompts, max_new_tokens=max_new_tokens,
                               sampling=sampling, seed=seed, stop_tokens=stop_tokens), len(prompts))
    return [row[:len(row) - _ends_with(row, stop_tokens)] for row in out]

  def generate_text(self, params: dict, tokenizer, prompts: Sequence[str], *,
                    max_new_tokens: int, sampling: SamplingConfig = DEFAULT_SAMPLING,
                    seed: int = 0, stop: Sequence[str] = ()) -> list[str]:
    """Text in, text out: each continuation cut before the first stop string in it."""
    ids = [tokenizer.encode(p) for p in prompts]
    out = _collect(self.stream(params, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                               seed=seed, stop_texts=stop, detokenize=tokenizer.decode),
                   len(prompts))
    texts = []
    for row in out:
      text = tokenizer.decode(row)
      cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
      texts.append(text[:cut])
    return texts
