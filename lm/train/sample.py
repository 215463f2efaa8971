"""A text sample from the model at the end of training, through the KV-cache decoder.

`sample_tokens` continues a prompt with `lm.infer.decode.Decoder` (one prefill, then one
cached step per token), attending to at most `window` tokens (the training context).
A continuation longer than the window is decoded in chunks: when the cache is full the
last `window // 2` tokens are prefilled again as the next chunk's context (learned
positions cannot slide inside a cache). Up to `window` tokens in all, the tokens are
exactly those of recomputing the whole sequence for every token (`recompute_tokens`, the
reference the tests hold it to for greedy decoding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm.infer.decode import Decoder
from lm.infer.sampling import SamplingConfig
from lm.model import ModelDef


def sample_tokens(model_def: ModelDef, params: dict, prompt_ids: list[int], *, num_tokens: int,
                  temperature: float, seed: int, window: int, mesh=None, rules=()
                  ) -> list[int]:
  """Continues `prompt_ids` by `num_tokens` tokens (greedy when temperature is 0)."""
  if window < 2:
    raise ValueError(f'window={window} must be >= 2')
  decoder = Decoder(model_def, cache_len=window, mesh=mesh, rules=rules)
  sampling = SamplingConfig(temperature=temperature)
  tokens, out, chunk = list(prompt_ids), [], 0
  while len(out) < num_tokens:
    context = tokens[-(window - 1):] if len(tokens) < window else tokens[-(window // 2):]
    n = min(num_tokens - len(out), window - len(context))
    new = decoder.generate(params, [context], max_new_tokens=n, sampling=sampling,
                           seed=seed + chunk)[0]
    tokens += new
    out += new
    chunk += 1
  return out


def recompute_tokens(model_def: ModelDef, params: dict, prompt_ids: list[int], *,
                     num_tokens: int, window: int) -> list[int]:
  """Greedy continuation by a full forward pass over the last `window` tokens per token."""

  @jax.jit
  def next_token(params, tokens_1L, length):
    logits_1LV = model_def.merge(params)(tokens_1L)
    return jnp.argmax(logits_1LV[0, length - 1])

  tokens = list(prompt_ids)
  for _ in range(num_tokens):
    context = tokens[-window:]
    buffer = np.zeros((1, window), np.int32)
    buffer[0, :len(context)] = context
    tokens.append(int(next_token(params, buffer, len(context))))
  return tokens[len(prompt_ids):]
