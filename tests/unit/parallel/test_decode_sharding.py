"""Tensor-parallel decoding: parameters and the KV cache split over a mesh by the logical
rules give the single-device tokens (float and int8)."""

import jax
import jax.numpy as jnp
import pytest

from configs.default import get_config
from lm.errors import UserError
from lm.infer import Decoder, SamplingConfig
from lm.infer.sharding import decode_mesh
from lm.model import ModelConfig, ModelDef
from lm.model.quantize import quantize
from lm.parallel import rules_for
from lm.run import place_params as shard_params

RULES = rules_for(get_config().mesh)
CFG = ModelConfig(vocab_size=96, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                  mlp_dim=96, max_len=48)
PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [7, 9, 3, 2, 38, 46, 26, 43, 38], [5]]
GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope='module')
def model():
  md = ModelDef.create(CFG)
  # Larger-than-init weights so that greedy choices are far from ties.
  params = jax.tree.map(lambda x: x * 3.0, md.init_params(jax.random.key(1)))
  return md, params, Decoder(md).generate(params, PROMPTS, max_new_tokens=10, sampling=GREEDY)


@pytest.mark.parametrize('data,tensor', [(1, 2), (2, 2)])
def test_sharded_decode_equals_single_device(model, data, tensor):
  md, params, want = model
  mesh = decode_mesh(tensor=tensor, data=data)
  sharded = shard_params(md, params, mesh, RULES)
  qkv = sharded['blocks']['attn']['qkv']['kernel']  # [L, D, K, G + 2, H], K over tensor
  assert qkv.sharding.spec[2] == 'tensor'
  assert qkv.addressable_shards[0].data.shape[2] == CFG.num_kv_heads // tensor
  assert sharded['blocks']['mlp']['up']['kernel'].sharding.spec[2] == 'tensor'
  decoder = Decoder(md, mesh=mesh, rules=RULES)
  cache = decoder.new_cache(len(PROMPTS), 32)
  assert cache['k'].sharding.spec[3] == 'tensor'
  assert cache['k'].addressable_shards[0].data.shape[1] == len(PROMPTS) // data
  got = decoder.generate(sharded, PROMPTS, max_new_tokens=10, sampling=GREEDY)
  assert got == want
  assert len({tuple(r) for r in got}) > 1


def test_int8_decodes_the_same_tensor_parallel(model):
  md, params, _ = model
  mesh = decode_mesh(tensor=2)
  qdef, qparams = quantize(md, jax.tree.map(lambda x: x / 3.0, params))
  want = Decoder(qdef).generate(qparams, PROMPTS, max_new_tokens=8, sampling=GREEDY)
  sharded = shard_params(qdef, qparams, mesh, RULES)
  scale = sharded['blocks']['attn']['qkv']['kernel_scale']  # [L, K, G + 2, H]
  assert scale.sharding.spec[1] == 'tensor'
  assert sharded['blocks']['attn']['qkv']['kernel'].dtype == jnp.int8
  got = Decoder(qdef, mesh=mesh, rules=RULES).generate(sharded, PROMPTS, max_new_tokens=8,
                                                       sampling=GREEDY)
  assert got == want


def test_a_mesh_larger_than_the_devices_is_a_clear_error():
  with pytest.raises(UserError, match='needs 16 devices but 8 are available'):
    decode_mesh(tensor=4, data=4)
