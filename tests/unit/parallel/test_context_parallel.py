"""Context parallelism: the 'sequence' mesh axis splits every row's tokens (the 'seq'
logical axis of the activations), and 20 train steps on packed rows give the single-device
losses (sequence=4, and sequence=2 x fsdp=2 x tensor=2)."""

import functools

import jax
import numpy as np
import pytest

from configs.default import get_config
from lm import parallel
from lm.model import ModelConfig, ModelDef
from lm.tools.plan import activation_bytes
from lm.train.optimizer import build_optimizer
from lm.train.state import fresh_state, state_shardings
from lm.train.step import make_train_step

SEQ_LEN, BATCH, STEPS = 32, 4, 20


def _model_cfg() -> ModelConfig:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = 2, 32, 64, 4, 2
  c.unroll_layers = False
  return ModelConfig.from_config(c, vocab_size=64, seq_len=SEQ_LEN)


def _packed_batches(rng):
  """STEPS batches of rows packing documents of random lengths (positions restart)."""
  tokens = rng.integers(0, 64, (STEPS, BATCH, SEQ_LEN + 1)).astype(np.int32)
  segments = np.zeros((STEPS, BATCH, SEQ_LEN), np.int32)
  positions = np.zeros_like(segments)
  for s in range(STEPS):
    for b in range(BATCH):
      cuts = np.sort(rng.choice(np.arange(1, SEQ_LEN), 2, replace=False))
      bounds = [0, *cuts, SEQ_LEN]
      for i in range(3):
        segments[s, b, bounds[i]:bounds[i + 1]] = i + 1
        positions[s, b, bounds[i]:bounds[i + 1]] = np.arange(bounds[i + 1] - bounds[i])
  return {'inputs': tokens[..., :-1], 'targets': tokens[..., 1:], 'segment_ids': segments,
          'positions': positions, 'weights': np.ones((STEPS, BATCH, SEQ_LEN), np.float32)}


def _losses(mesh_sizes: dict, batches):
  m = get_config().mesh
  m.update({'data': 1, **mesh_sizes})
  n = int(np.prod([m[a] for a in parallel.MESH_AXES]))
  mesh = parallel.build_mesh(m, devices=jax.devices()[:n])
  rules = parallel.rules_for(m)
  model_def = ModelDef.create(_model_cfg())
  opt_cfg = get_config().optimizer
  opt_cfg.warmup_steps = 1
  optimizer, schedule = build_optimizer(opt_cfg, total_steps=STEPS)
  shardings = state_shardings(model_def, optimizer, mesh, rules)
  state = jax.device_put(jax.jit(lambda: fresh_state(model_def, optimizer, 0))(), shardings)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1, rules=rules)
  step = make_train_step(model_def, optimizer, schedule, grad_accum=1, mesh=mesh, rules=rules,
                         shardings=shardings, batch_sharding=batch_sharding)
  compiled = step.lower(state, parallel.global_batch(batches, batch_sharding,
                                                     batch_axis=1)).compile()
  _, metrics = compiled(state, parallel.global_batch(batches, batch_sharding, batch_axis=1))
  return np.asarray(jax.device_get(metrics['train/loss'])), compiled.as_text()


@functools.cache
def _one_device_losses() -> np.ndarray:
  return _losses({}, _packed_batches(np.random.default_rng(0)))[0]


@pytest.mark.parametrize('sizes', [{'sequence': 4},
                                   {'sequence': 2, 'fsdp': 2, 'tensor': 2}])
def test_context_parallel_losses_equal_one_device(sizes):
  ref = _one_device_losses()  # computed once for both meshes
  got, hlo = _losses(sizes, _packed_batches(np.random.default_rng(0)))
  assert ref.shape == (STEPS,) and np.ptp(ref) > 1e-3  # the steps do change the model
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  # The activations are split over 'sequence': some collective runs across it.
  assert 'all-gather' in hlo or 'collective-permute' in hlo or 'all-to-all' in hlo


def test_plan_splits_token_activations_over_the_sequence_axis():
  cfg = _model_cfg()
  one = activation_bytes(cfg, rows=2, seq_len=1024, tensor=1)
  four = activation_bytes(cfg, rows=2, seq_len=1024, tensor=1, sequence=4)
  # Per-token tensors shrink 4x; the attention scores (T/4 queries x T keys) shrink 4x as well.
  assert one / 4 <= four < one / 2
