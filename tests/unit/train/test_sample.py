"""lm.train.sample: the end-of-run sample through the KV-cache decoder equals full
recomputation for greedy decoding, and continues past the training window in chunks."""

import jax
import pytest

from configs.default import get_config
from lm import parallel
from lm.model import ModelConfig, ModelDef
from lm.train.sample import recompute_tokens, sample_tokens

WINDOW = 32


def _model(position: str) -> tuple[ModelDef, dict]:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = 1, 32, 64, 4, 2
  c.position, c.init_std = position, 0.3  # peaked logits: no near-ties for argmax to flip on
  model_def = ModelDef.create(ModelConfig.from_config(c, vocab_size=48, seq_len=WINDOW))
  return model_def, model_def.init_params(jax.random.key(1))


@pytest.mark.parametrize('position', ['learned', 'rope'])
def test_greedy_kv_cache_sample_equals_recomputation(position):
  model_def, params = _model(position)
  prompt = [3, 17, 5, 9, 40, 2, 11]
  n = WINDOW - len(prompt)
  want = recompute_tokens(model_def, params, prompt, num_tokens=n, window=WINDOW)
  got = sample_tokens(model_def, params, prompt, num_tokens=n, temperature=0.0, seed=0,
                      window=WINDOW)
  assert got == want
  assert len(set(want)) > 1  # not a degenerate constant continuation


def test_sample_past_the_window_with_sharded_params():
  model_def, params = _model('learned')
  m = get_config().mesh
  m.data, m.fsdp = 2, 4
  mesh, rules = parallel.build_mesh(m), parallel.rules_for(m)
  params = jax.device_put(params, parallel.shardings_for(model_def.logical_axes(), params, mesh,
                                                         rules))
  prompt = list(range(1, WINDOW + 5))  # longer than the window itself
  greedy = sample_tokens(model_def, params, prompt, num_tokens=24, temperature=0.0, seed=0,
                         window=WINDOW, mesh=mesh, rules=rules)
  assert len(greedy) == 24 and all(0 <= t < 48 for t in greedy)
  # The first chunk sees the last WINDOW // 2 prompt tokens: recomputation over them agrees.
  first = recompute_tokens(model_def, params, prompt[-(WINDOW // 2):], num_tokens=WINDOW // 2,
                           window=WINDOW)
  assert greedy[:WINDOW // 2] == first
  hot = sample_tokens(model_def, params, prompt, num_tokens=8, temperature=1.0, seed=3,
                      window=WINDOW, mesh=mesh, rules=rules)
  assert hot == sample_tokens(model_def, params, prompt, num_tokens=8, temperature=1.0, seed=3,
                              window=WINDOW, mesh=mesh, rules=rules)  # same seed, same text
