"""lm.tools.inspect (python -m lm.inspect): attention maps match the model's own attention,
per-token losses match its logits, the CLI writes heatmaps and report.json for a tiny
trained run, and an MoE run inspects too."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_api import REPO, tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)

from lm import api
from lm import config as config_lib
from lm.data.tokenizers.byte import ByteTokenizer
from lm.model import ModelConfig, ModelDef, Transformer
from lm.model.attention import attention_mask
from lm.model.config import MoEConfig
from lm.run import write_run
from lm.tools import inspect

CFG = ModelConfig(vocab_size=260, num_layers=2, width=64, num_heads=4, num_kv_heads=2,
                  mlp_dim=96, max_len=32)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def model():
  return Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def tokens_T():
  return np.random.default_rng(0).integers(0, CFG.vocab_size, 12)


def test_maps_are_causal_distributions(model, tokens_T):
  maps = inspect.attention_maps(model, tokens_T)
  t = len(tokens_T)
  assert maps.shape == (CFG.num_layers, CFG.num_heads, t, t)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  assert np.all(maps[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] == 0.0)
  assert np.all(maps[..., np.arange(t), np.arange(t)] > 0.0)
  assert maps[..., 1:, 0].min() < maps[..., 1:, 0].max()  # not uniform everywhere


def test_layerwise_run_is_the_model(model, tokens_T):
  """The residual stream advanced block by block gives exactly the model's logits, and each
  layer's maps reproduce that block's attention output (probs @ v through the out proj)."""
  tr = inspect.trace(model, tokens_T)
  np.testing.assert_allclose(tr.logits_TV, model(jnp.asarray(tokens_T)[None])[0], atol=1e-5)
  t = len(tokens_T)
  positions = jnp.arange(t)[None]
  mask = attention_mask(jnp.ones((1, t), jnp.int32))
  for i, block in enumerate(model.layer_blocks()):
    h_1TD = block.attn_norm(jnp.asarray(tr.resid_LTD[i])[None])
    _, _, v_1TKH = block.attn._project(h_1TD, positions)
    v_1TNH = jnp.repeat(v_1TKH, CFG.num_heads // CFG.num_kv_heads, axis=2)
    o_1TNH = jnp.einsum('nts,snh->tnh', tr.maps_LNTT[i], v_1TNH[0])[None]
    np.testing.assert_allclose(block.attn.out(o_1TNH), block.attn(h_1TD, positions, mask),
                               atol=1e-5)
  # Layer 1's maps depend on layer 0's output: a stream that skipped blocks would differ.
  x_1TD = model.embed_tokens(jnp.asarray(tokens_T)[None], positions)
  skipped = model.layer_blocks()[1].attention_probs(x_1TD, positions, mask)
  assert not np.allclose(skipped[0], tr.maps_LNTT[1], atol=1e-4)


def test_heads_sharing_a_kv_head_differ(model, tokens_T):
  maps = inspect.attention_maps(model, tokens_T)
  groups = CFG.num_heads // CFG.num_kv_heads
  for kv in range(CFG.num_kv_heads):
    a, b = maps[:, kv * groups], maps[:, kv * groups + 1]
    assert np.abs(a - b).max() > 1e-3


def test_token_report_losses(model):
  tok = ByteTokenizer()
  text = 'to be or not to be'
  rows = inspect.token_report(model, tok, text, top_k=3)
  ids = tok.encode(text)
  assert [r['token_id'] for r in rows] == ids and rows[0]['token'] == 't'
  logits = np.asarray(model(jnp.asarray(ids)[None])[0], np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want = [-logp[i, ids[i + 1]] for i in range(len(ids) - 1)]
  np.testing.assert_allclose([r['loss'] for r in rows[:-1]], want, rtol=1e-5)
  assert rows[-1]['loss'] is None
  for i, r in enumerate(rows):
    top = [p['token_id'] for p in r['top_k']]
    assert top == list(np.argsort(-logp[i])[:3])
    np.testing.assert_allclose([p['prob'] for p in r['top_k']], np.exp(logp[i, top]), rtol=1e-5)


def test_long_text_is_cut(model):
  ids, note = inspect.encode(ByteTokenizer(), 'x' * 40, CFG.max_len)
  assert len(ids) == CFG.max_len and '40 tokens' in note
  assert inspect.encode(ByteTokenizer(), 'abc', CFG.max_len) == (ByteTokenizer().encode('abc'),
                                                                 None)
  assert len(inspect.token_report(model, ByteTokenizer(), 'y' * 40)) == CFG.max_len
  with pytest.raises(inspect.InspectError, match='layers'):
    inspect.parse_layers('0,5', 2)
  assert inspect.parse_layers('all', 3) == [0, 1, 2] and inspect.parse_layers('1', 3) == [1]


def test_cli(tmp_path):
  config = tiny_config(tmp_path)
  config.train.steps = 10
  config.checkpoint.every = 10
  api.train(config, tmp_path / 'run')
  text = 'to be or not to be, that is the question.'  # 42 bytes > max_len 32
  out = subprocess.run([sys.executable, '-m', 'lm.inspect', f'--workdir={tmp_path / "run"}',
                        f'--text={text}', '--top_k=3'], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert 'only the first 32' in out.stdout
  pngs = sorted((tmp_path / 'run' / 'inspect').glob('*.png'))
  assert [p.name for p in pngs] == ['attention_layer00.png', 'attention_layer01.png']
  for p in pngs:
    data = p.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
  report = json.loads((tmp_path / 'run' / 'inspect' / 'report.json').read_text())
  rows = report['tokens']
  assert len(rows) == 32 and ''.join(r['token'] for r in rows) == text[:32]
  assert all(len(r['top_k']) == 3 for r in rows) and rows[-1]['loss'] is None
  assert all(r['loss'] > 0 for r in rows[:-1])
  assert f"{rows[1]['loss']:.3f}" in out.stdout

  missing = subprocess.run([sys.executable, '-m', 'lm.inspect',
                            f'--workdir={tmp_path / "nope"}', '--text=hi'], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
  assert missing.returncode == 1
  assert missing.stderr.strip().count('\n') == 0 and 'nope' in missing.stderr


MOE_CFG = ModelConfig(vocab_size=260, num_layers=4, width=32, num_heads=2, num_kv_heads=2,
                      mlp_dim=48, max_len=16,
                      moe=MoEConfig(num_experts=4, top_k=2, every=2, capacity_factor=0.0))


def test_moe_model_layerwise_run_is_the_model():
  """Experts every other layer: layer_blocks() flattens the groups, and running them one by
  one still gives the model's own logits."""
  model = Transformer(MOE_CFG, rngs=nnx.Rngs(1))
  assert len(model.layer_blocks()) == MOE_CFG.num_layers
  assert [b.is_moe for b in model.layer_blocks()] == [False, True, False, True]
  tokens_T = np.random.default_rng(1).integers(0, 260, 10)
  tr = inspect.trace(model, tokens_T)
  assert tr.maps_LNTT.shape == (4, 2, 10, 10)
  np.testing.assert_allclose(tr.logits_TV, model(jnp.asarray(tokens_T)[None])[0], atol=1e-5)


def test_inspect_run_on_an_moe_run(tmp_path):
  config = config_lib.default_config()
  config.data.tokenizer.kind = 'byte'
  config.data.seq_len = 16
  config.model.update(num_layers=4, width=32, num_heads=2, num_kv_heads=2, mlp_dim=48)
  config.model.moe.update(num_experts=4, top_k=2, every=2)
  config = config_lib.resolve(config, num_devices=8)
  tok = ByteTokenizer()
  model_def = ModelDef.create(ModelConfig.from_config(config.model, vocab_size=tok.vocab_size,
                                                      seq_len=16))
  write_run(tmp_path / 'moe', config, model_def.init_params(jax.random.key(0)), tok)
  rows, pngs, out, note = inspect.inspect_run(tmp_path / 'moe', 'to be or not', top_k=2,
                                              layers='1,3')
  assert [p.name for p in pngs] == ['attention_layer01.png', 'attention_layer03.png']
  assert note is None and len(rows) == len('to be or not') and out == tmp_path / 'moe' / 'inspect'
  assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)
