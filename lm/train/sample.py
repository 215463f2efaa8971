"""A text sample from the model at the end of training (full re-computation per token).

This is the simple, obviously-correct decoder the training loop uses to show what
the model learned; lm/infer holds the KV-cache decoder for real serving.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm.model import ModelDef


def sample_tokens(model_def: ModelDef, params: dict, prompt_ids: list[int], *, num_tokens: int,
                  temperature: float, seed: int, window: int) -> list[int]:
  """Continues `prompt_ids` by `num_tokens` tokens, attending to the last `window` tokens."""

  @jax.jit
  def next_token(params, tokens_1L, length, key):
    logits_1LV = model_def.merge(params)(tokens_1L)
    logits_V = logits_1LV[0, length - 1]
    if temperature <= 0:
      return jnp.argmax(logits_V)
    return jax.random.categorical(key, logits_V / temperature)

  tokens = list(prompt_ids)
  key = jax.random.key(seed)
  for i in range(num_tokens):
    context = tokens[-window:]
    buffer = np.zeros((1, window), np.int32)
    buffer[0, :len(context)] = context
    token = next_token(params, buffer, len(context), jax.random.fold_in(key, i))
    tokens.append(int(token))
  return tokens[len(prompt_ids):]
