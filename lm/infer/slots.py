"""Slot decode state for continuous batching: a fixed number of slots share one KV cache.

The shared cache is {'k', 'v'}: [layers, slots, cache_len, K, H]; slot b's row holds the
positions of the request that occupies it, exactly as a row of `Decoder`'s cache does. A
request joins in two steps (JetStream's prefill / insert):

  prefill  its prompt runs through `prefill_chunk`, `chunk` tokens per call, on a cache row
           of its own ([layers, 1, cache_len, K, H]), so that decode steps of the running
           slots can be dispatched between its chunks;
  insert   the row is copied whole into a free slot, which overwrites whatever an earlier
           occupant left there (nothing of it can leak into the new request).

`steps` then runs `k` decode steps of every slot in one dispatch (a lax.scan): a slot
stops on the device at its end-of-text token or when its token budget is spent, so the
host sees its tokens only once per k steps. Slots that are not active are computed and
their output thrown away (their writes land in their own, free, row).

Sampling: the n-th new token of a request (n = 0 from the prefill) with seed s is drawn
with the key fold_in(fold_in(key(0), n), s), the key `Decoder.stream` gives a row with that
seed at step n (`RowSampling`), and every slot is sampled on its own: a request's tokens
do not depend on what else runs, and equal those of `Decoder.generate` alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import InputError
from lm.infer.decode import Decoder
from lm.infer.sampling import SamplingConfig, sample_rows

TOP_LOGPROBS = 5  # alternatives reported per token (the OpenAI completions API's bound)
STATE_KEYS = ('tokens', 'positions', 'steps', 'left', 'active', 'seeds', 'temperature',
              'top_k', 'top_p')


def empty_state(slots: int) -> dict[str, np.ndarray]:
  """Host-side decode state of `slots` free slots (the arrays `SlotDecoder.steps` takes).

  tokens: the token each slot feeds next; positions: where it is fed; steps: the index n
  of the token it samples next; left: tokens it may still make; active: occupied and not
  finished; seeds and the sampling knobs of its request."""
  z = np.zeros(slots, np.int32)
  return {'tokens': z.copy(), 'positions': z.copy(), 'steps': z.copy(), 'left': z.copy(),
          'active': np.zeros(slots, bool), 'seeds': np.zeros(slots, np.uint32),
          'temperature': np.zeros(slots, np.float32), 'top_k': z.copy(),
          'top_p': np.ones(slots, np.float32)}


def _key(n, seed):
  """The key of token n of a request with this seed (see the module doc)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(0), n), seed)


def _draw(logits_BV, n_B, seed_B, temperature_B, top_k_B, top_p_B):
  """Token n_B[b] of each slot's request, every row sampled on its own (argmax alone when
  no row samples: `sample_rows`)."""
  return sample_rows(logits_BV, jax.vmap(_key)(n_B, seed_B), temperature_B, top_k_B, top_p_B)


def _scores(logits_BV, chosen_B):
  """(log-probability of chosen [B], top log-probabilities [B, K], their ids [B, K]) under
  the model's distribution (before temperature and filters)."""
  logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
  chosen_lp_B = jnp.take_along_axis(logp_BV, chosen_B[:, None], axis=-1)[:, 0]
  top_lp_BK, top_id_BK = jax.lax.top_k(logp_BV, TOP_LOGPROBS)
  return chosen_lp_B, top_lp_BK, top_id_BK.astype(jnp.int32)


class SlotDecoder:
  """The jit'd prefill chunk, insert and k-step decode of `slots` slots over one model.

  `decoder` supplies the model, the cache length (it must have one) and the mesh (a
  tensor-parallel decoder gives a sharded shared cache); `eos_id` ends a slot's request."""

  def __init__(self, decoder: Decoder, *, slots: int, eos_id: int, chunk: int = 32):
    if decoder.cache_len is None:
      raise InputError('a SlotDecoder needs a Decoder with a fixed cache_len')
    if slots < 1:
      raise InputError(f'slots={slots} must be >= 1')
    if chunk < 1:
      raise InputError(f'chunk={chunk} must be >= 1')
    self.decoder, self.slots, self.eos_id = decoder, slots, int(eos_id)
    self.cache_len, self.chunk = decoder.cache_len, min(chunk, decoder.cache_len)
    donate = jax.default_backend() != 'cpu'
    self._chunk = jax.jit(self._chunk_fn, donate_argnums=(1,) if donate else ())
    self._insert = jax.jit(self._insert_fn, donate_argnums=(0,) if donate else ())
    self._first = jax.jit(self._first_fn)
    self._read = jax.jit(self._read_fn)
    self._write = jax.jit(self._write_fn, donate_argnums=(0,) if donate else ())
    self._steps = jax.jit(self._steps_fn, static_argnums=(3,),
                          donate_argnums=(1,) if donate else ())

  def new_cache(self) -> dict[str, jax.Array]:
    return self.decoder.new_cache(self.slots, self.cache_len)

  def new_row(self) -> dict[str, jax.Array]:
    return self.decoder.new_cache(1, self.cache_len)

  # ---- the jit'd pieces -------------------------------------------------------------------

  def _chunk_fn(self, params, row, tokens_C, next_C, start, last):
    c = tokens_C.shape[0]
    # Padding past the cache is written at its last slot, which no prompt token reaches
    # (a prompt is shorter than the cache) and decode overwrites before reading.
    positions_1C = jnp.minimum(start + jnp.arange(c, dtype=jnp.int32), self.cache_len - 1)[None]
    with self.decoder._rules():
      logits_1CV, row = self.decoder.model_def.merge(params).decode(
          tokens_C[None], positions_1C, row)
    lp_C, top_lp_CK, top_id_CK = _scores(logits_1CV[0], next_C)
    return (lp_C, top_lp_CK, top_id_CK), logits_1CV[0, last], row

  def _insert_fn(self, cache, row, slot):
    return {name: jax.lax.dynamic_update_slice_in_dim(cache[name], row[name], slot, axis=1)
            for name in cache}

  def _read_fn(self, row, start):
    return {name: jax.lax.dynamic_slice_in_dim(row[name], start, self.chunk, axis=2)
            for name in row}

  def _write_fn(self, row, block, start):
    return {name: jax.lax.dynamic_update_slice_in_dim(row[name], block[name], start, axis=2)
            for name in row}

  def _first_fn(self, logits_V, seed, temperature, top_k, top_p):
    token = _draw(logits_V[None], jnp.zeros(1, jnp.int32), seed[None], temperature[None],
                  top_k[None], top_p[None])[0]
    lp, top_lp, top_id = _scores(logits_V[None], token[None])
    return token, lp[0], top_lp[0], top_id[0]

  def _steps_fn(self, params, cache, state, k):
    model = self.decoder.model_def.merge(params)
    knobs = (state['seeds'], state['temperature'], state['top_k'], state['top_p'])

    def step(carry, _):
      cache, st = carry
      with self.decoder._rules():
        logits_B1V, cache = model.decode(st['tokens'][:, None], st['positions'][:, None], cache)
      logits_BV = logits_B1V[:, 0]
      token_B = _draw(logits_BV, st['steps'], *knobs)
      lp_B, top_lp_BK, top_id_BK = _scores(logits_BV, token_B)
      active_B = st['active']
      left_B = st['left'] - active_B.astype(jnp.int32)
      still_B = active_B & (token_B != self.eos_id) & (left_B > 0)
      st = dict(st, tokens=jnp.where(active_B, token_B, st['tokens']),
                positions=st['positions'] + still_B.astype(jnp.int32),
                steps=st['steps'] + active_B.astype(jnp.int32), left=left_B, active=still_B)
      return (cache, st), (jnp.where(active_B, token_B, -1), lp_B, top_lp_BK, top_id_BK)

    dynamic = {name: state[name] for name in STATE_KEYS}
    (cache, dynamic), outs = jax.lax.scan(step, (cache, dynamic), None, length=k)
    return outs, dynamic, cache

  # ---- host-side calls --------------------------------------------------------------------

  def prefill_chunk(self, params, row, prompt: list[int], start: int):
    """Runs prompt[start:start + chunk] into `row`. Returns ((lp [C], top_lp [C, K],
    top_id [C, K]) as host arrays, where lp[i] is the log-probability of prompt token
    start + i + 1 given those before it; the logits after the prompt's last token when
    this chunk holds it (else None); the updated row)."""
    c = self.chunk
    piece = prompt[start:start + c]
    tokens_C = np.zeros(c, np.int32)
    tokens_C[:len(piece)] = piece
    after = prompt[start + 1:start + 1 + c]
    next_C = np.zeros(c, np.int32)
    next_C[:len(after)] = after
    last = len(prompt) - 1 - start
    holds_last = 0 <= last < c
    scores, last_V, row = self._chunk(params, row, tokens_C, next_C, np.int32(start),
                                      np.int32(last if holds_last else 0))
    return tuple(np.asarray(s) for s in scores), (last_V if holds_last else None), row

  def first_token(self, logits_V, seed: int, sampling: SamplingConfig):
    """(token 0, its log-probability, top log-probabilities [K], their ids [K])."""
    out = self._first(logits_V, np.uint32(seed), np.float32(sampling.temperature),
                      np.int32(sampling.top_k), np.float32(sampling.top_p))
    token, lp, top_lp, top_id = (np.asarray(x) for x in out)
    return int(token), float(lp), top_lp, top_id

  def read_block(self, row, start: int) -> dict[str, jax.Array]:
    """The K/V of positions start..start + chunk of a prefill row: {'k', 'v'}: [layers, 1,
    chunk, K, H] (a block of the prefix cache)."""
    return self._read(row, np.int32(start))

  def write_block(self, row, block: dict[str, jax.Array], start: int):
    """`row` with positions start..start + chunk replaced by `block` (from `read_block`)."""
    return self._write(row, block, np.int32(start))

  def block_bytes(self) -> int:
    """Bytes of one block (K and V of `chunk` positions over every layer)."""
    cfg = self.decoder.cfg
    return (2 * cfg.num_layers * self.chunk * cfg.num_kv_heads * cfg.head_dim
            * np.dtype(cfg.jnp_dtype).itemsize)

  def insert(self, cache, row, slot: int):
    return self._insert(cache, row, np.int32(slot))

  def steps(self, params, cache, state: dict[str, np.ndarray], k: int
            ) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray], Any]:
    """k decode steps of every slot: ((tokens [k, B] (-1 where a slot was not active),
    lp [k, B], top_lp [k, B, K], top_id [k, B, K]), the new state, the new cache)."""
    outs, new_state, cache = self._steps(params, cache, state, k)
    host = {name: np.array(v) for name, v in new_state.items()}
    return tuple(np.asarray(o) for o in outs), host, cache
