"""`sample` skips the vocabulary sort when no row samples (a lax.cond): its tokens equal the
unconditional computation's for greedy, sampled and mixed batches, scalar or per-row knobs."""

import jax
import jax.numpy as jnp
import numpy as np

from lm.infer.sampling import RowSampling, SamplingConfig, sample, sample_always


def _logits(b=6, v=50):
  return jax.random.normal(jax.random.key(1), (b, v)) * 3.0


def _reference_rows(logits_BV, key, knobs):
  """The per-row draw as it was before the shortcut: every row filtered and drawn."""
  keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, knobs['seed'])

  def one(logits_V, k, t, tk, tp):
    return sample_always(logits_V[None], k, temperature=t, top_k=tk, top_p=tp)[0]
  return jax.vmap(one)(logits_BV, keys_B, knobs['temperature'], knobs['top_k'], knobs['top_p'])


def test_scalar_knobs_give_the_unconditional_tokens():
  logits, key = _logits(), jax.random.key(7)
  for cfg in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.8, top_k=5),
              SamplingConfig(temperature=1.0, top_p=0.9)):
    got = jax.jit(sample)(logits, key, **cfg.as_arrays())
    want = sample_always(logits, key, **cfg.as_arrays())
    np.testing.assert_array_equal(got, want)
  greedy = jax.jit(sample)(logits, key, **SamplingConfig(temperature=0.0).as_arrays())
  np.testing.assert_array_equal(greedy, jnp.argmax(logits, axis=-1))


def test_per_row_knobs_give_the_unconditional_tokens_greedy_and_mixed():
  logits, key = _logits(), jax.random.key(3)
  greedy = SamplingConfig(temperature=0.0)
  mixed = (greedy, SamplingConfig(temperature=1.0, top_k=4), greedy,
           SamplingConfig(temperature=0.7, top_p=0.8), greedy, SamplingConfig(temperature=2.0))
  for configs in ((greedy,) * 6, mixed):
    knobs = RowSampling(configs, tuple(range(10, 16))).as_arrays()
    got = jax.jit(sample)(logits, key, **knobs)
    np.testing.assert_array_equal(got, _reference_rows(logits, key, knobs))
  # the sampled rows really sample (differ from argmax somewhere over a few keys)
  knobs = RowSampling(mixed, tuple(range(10, 16))).as_arrays()
  draws = np.stack([np.asarray(sample(logits, jax.random.key(s), **knobs)) for s in range(8)])
  argmax = np.asarray(jnp.argmax(logits, axis=-1))
  assert (draws[:, [0, 2, 4]] == argmax[[0, 2, 4]]).all()
  assert (draws[:, [1, 3, 5]] != argmax[[1, 3, 5]]).any()
