"""Next-token choice from logits: greedy, temperature, top-k and top-p (nucleus).

The settings are traced arrays, not static arguments, so changing them between
requests never recompiles the decode step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lm.errors import InputError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy (argmax); top_k 0 and top_p 1 switch those filters off."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise InputError(f'temperature={self.temperature} must be >= 0 (0 = greedy)')
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise InputError(f'top_k={self.top_k!r} must be an int >= 0 (0 = off)')
    if not 0.0 < self.top_p <= 1.0:
      raise InputError(f'top_p={self.top_p} must be in (0, 1] (1 = off)')

  def as_arrays(self) -> dict[str, jax.Array]:
    return {'temperature': jnp.float32(self.temperature), 'top_k': jnp.int32(self.top_k),
            'top_p': jnp.float32(self.top_p)}


@dataclasses.dataclass(frozen=True)
class RowSampling:
  """One SamplingConfig and seed per batch row (e.g. one per server request); `Decoder.stream`
  accepts it wherever it takes a SamplingConfig, and then samples every row on its own."""

  configs: tuple[SamplingConfig, ...]
  seeds: tuple[int, ...]

  def __post_init__(self):
    if len(self.configs) != len(self.seeds):
      raise InputError(f'{len(self.configs)} sampling configs but {len(self.seeds)} seeds; '
                       'give one of each per row')
    for s in self.seeds:
      if not 0 <= s < 2**32:
        raise InputError(f'seed={s} must be in [0, 2**32)')

  def as_arrays(self) -> dict[str, jax.Array]:
    return {'temperature': jnp.array([c.temperature for c in self.configs], jnp.float32),
            'top_k': jnp.array([c.top_k for c in self.configs], jnp.int32),
            'top_p': jnp.array([c.top_p for c in self.configs], jnp.float32),
            'seed': jnp.array(self.seeds, jnp.uint32)}


def filter_logits(logits_BV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Sets logits outside the top-k, then outside the nucleus, to -inf (in that order, as
  Hugging Face does). The nucleus is the smallest set of most likely tokens whose
  probability reaches top_p; the most likely token is always kept."""
  logits_BV = logits_BV.astype(jnp.float32)
  vocab = logits_BV.shape[-1]
  sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]  # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
  logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  sorted_BV = jnp.where(jnp.arange(vocab) < k, sorted_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = (mass_before_BV < top_p) | (jnp.arange(vocab) == 0)
  cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)


def sample(logits_BV: jax.Array, key: jax.Array, *, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, seed: jax.Array | None = None) -> jax.Array:
  """One token id per row [B]: argmax when temperature is 0, else a draw from
  softmax(logits / temperature) restricted to the top-k and the top-p nucleus.

  With `seed` ([B], from `RowSampling`) every knob is per row too, and row b draws with
  fold_in(key, seed[b]): its tokens do not depend on the other rows of the batch.

  The filter sorts the whole vocabulary (measured at ≈ 2/3 of the default model's batch-16
  decode step on a 2-core CPU), so it runs under a `lax.cond` that takes it only when some row
  samples: a greedy batch costs one argmax. The tokens are those of the unconditional
  computation (`sample_always`)."""
  greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.lax.cond(
      jnp.any(temperature > 0),
      lambda: sample_always(logits_BV, key, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed),
      lambda: greedy_B)


def sample_rows(logits_BV: jax.Array, keys_B: jax.Array, temperature_B: jax.Array,
                top_k_B: jax.Array, top_p_B: jax.Array) -> jax.Array:
  """`sample` of each row b with its own key and knobs (the per-row path of `sample` and
  of lm.infer.slots), skipping the filter when no row samples."""
  def one_row(logits_V, key, temperature, top_k, top_p):
    return sample_always(logits_V[None], key, temperature=temperature, top_k=top_k,
                         top_p=top_p)[0]
  greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.lax.cond(
      jnp.any(temperature_B > 0),
      lambda: jax.vmap(one_row)(logits_BV, keys_B, temperature_B, top_k_B, top_p_B),
      lambda: greedy_B)


def sample_always(logits_BV: jax.Array, key: jax.Array, *, temperature: jax.Array,
                  top_k: jax.Array, top_p: jax.Array, seed: jax.Array | None = None
                  ) -> jax.Array:
  """`sample` computed without the greedy shortcut: the filter and the draw always run
  (under vmap a `lax.cond` runs both branches, so the per-row path calls this)."""
  if seed is not None:
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, seed)
    return sample_rows(logits_BV, keys_B, temperature, top_k, top_p)
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  scaled_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  drawn_B = jax.random.categorical(key, filter_logits(scaled_BV, top_k, top_p), axis=-1)
  return jnp.where(temperature > 0, drawn_B, greedy_B).astype(jnp.int32)
