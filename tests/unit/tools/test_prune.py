"""lm.tools.prune (python -m lm prune): keeping everything reproduces the run exactly; parts
whose output weights are zero (an MLP neuron, a KV group, a whole layer) are found
unimportant and removed without changing the logits; the pruned run's parameter count
matches its targets; it loads, generates, converts to Hugging Face with the same logits
and trains; impossible targets name their flag."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_api import tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)

from lm import api
from lm.compat import hf
from lm.data.tokenizers.byte import ByteTokenizer
from lm.model import ModelConfig, ModelDef
from lm.run import load_run, write_run
from lm.tools import prune
from lm.tools.prune_importance import forward_with_stats, importance

CFG = ModelConfig(vocab_size=64, num_layers=3, width=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, max_len=16, use_bias=True, norm='layernorm')


def _params(cfg, seed=0):
  """Initial parameters with every array perturbed (norm scales and biases not constant)."""
  params = ModelDef.create(cfg).init_params(jax.random.key(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [np.array(x + 0.05 * jax.random.normal(k, x.shape))
                                   for x, k in zip(leaves, keys, strict=True)])


def _batch(rows=4, t=16, vocab=64):
  rng = np.random.default_rng(0)
  segments = np.ones((rows, t), np.int32)
  segments[0, 12:] = 0  # padding, which counts for nothing
  return {'inputs': rng.integers(0, vocab, (rows, t)).astype(np.int32),
          'positions': np.tile(np.arange(t, dtype=np.int32), (rows, 1)),
          'segment_ids': segments}


def _logits(model_def, params, batch):
  return np.asarray(model_def.merge(params)(batch['inputs'], batch['positions'],
                                            batch['segment_ids']))


def _pruned_def(sizes):
  return ModelDef.create(ModelConfig(**{**CFG.__dict__, **sizes, 'head_dim': CFG.head_dim}))


def test_scoring_pass_is_the_model():
  model_def, params, batch = ModelDef.create(CFG), _params(CFG), _batch()
  logits, sums = forward_with_stats(model_def, params, batch)
  np.testing.assert_allclose(logits, _logits(model_def, params, batch), atol=1e-5)
  assert int(sums['tokens']) == 4 * 16 - 4


@pytest.mark.parametrize('part', ['neuron', 'kv_group', 'layer'])
def test_part_with_zero_output_is_removed_and_logits_stay(part):
  """Zeroing a part's inputs and outputs makes it dead: importance ranks it last, and the
  model without it computes the same logits."""
  model_def, batch = ModelDef.create(CFG), _batch()
  params = _params(CFG)
  blocks = params['blocks']
  sizes = prune.target_sizes(CFG, prune.Targets())
  if part == 'neuron':
    blocks['mlp']['up']['kernel'][:, :, 7] = 0.0  # every layer keeps the same mlp_dim
    blocks['mlp']['up']['bias'][:, 7] = 0.0
    blocks['mlp']['down']['kernel'][:, 7] = 0.0
    sizes['mlp_dim'] = CFG.mlp_dim - 1
  elif part == 'kv_group':  # group 0 holds query heads 0 and 1; group 1 in layer 1
    for layer, group in ((0, 0), (1, 1), (2, 0)):
      blocks['attn']['qkv']['kernel'][layer, :, group] = 0.0
      blocks['attn']['qkv']['bias'][layer, group] = 0.0
      blocks['attn']['out']['kernel'][layer, 2 * group:2 * group + 2] = 0.0
    sizes.update(num_kv_heads=1, num_heads=2)
  else:
    blocks['attn']['out']['kernel'][0] = 0.0
    blocks['attn']['out']['bias'][0] = 0.0
    blocks['mlp']['down']['kernel'][0] = 0.0
    blocks['mlp']['down']['bias'][0] = 0.0
    sizes['num_layers'] = CFG.num_layers - 1
  imp = importance(model_def, params, [batch])
  plan = prune.make_plan(CFG, imp, sizes)
  if part == 'neuron':
    assert (imp.neurons[:, 7] == 0.0).all() and 7 not in plan.neurons
  elif part == 'kv_group':
    assert plan.groups.tolist() == [[1], [0], [1]]  # each layer keeps its live group
  else:
    assert imp.layers[0] == pytest.approx(0.0, abs=1e-6) and plan.layers.tolist() == [1, 2]
  small = prune.prune_params(model_def, params, plan)
  np.testing.assert_allclose(_logits(_pruned_def(sizes), small, batch),
                             _logits(model_def, params, batch), atol=2e-5)


def test_targets_sizes_and_errors():
  cfg = CFG
  assert prune.target_sizes(cfg, prune.Targets.parse(width='0.5', mlp_dim='24')) == {
      'num_layers': 3, 'num_kv_heads': 2, 'num_heads': 4, 'mlp_dim': 24, 'width': 16}
  assert prune.target_sizes(cfg, prune.Targets.parse(num_kv_heads='1'))['num_heads'] == 2
  assert prune.target_sizes(cfg, prune.Targets.parse(num_heads='2'))['num_kv_heads'] == 2
  for flags, message in (({'num_heads': '3'}, '--num_heads=3'),
                         ({'num_kv_heads': '1', 'num_heads': '4'}, '--num_heads=4'),
                         ({'width': '64'}, '--width=64: the run has 32'),
                         ({'mlp_dim': '1.5'}, '--mlp_dim=1.5: a fraction'),
                         ({'num_layers': '0'}, '--num_layers=0'),
                         ({'width': 'half'}, "--width='half'")):
    with pytest.raises(prune.PruneError, match=message):
      prune.target_sizes(cfg, prune.Targets.parse(**flags))
  with pytest.raises(prune.PruneError, match='mixture of experts'):
    prune.check_prunable(ModelConfig.from_config(
        api.load_config('configs/default.py', {'model.moe.num_experts': 2}).model,
        vocab_size=64, seq_len=16), 'RUN')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """A tiny run (random perturbed weights) written through write_run, on text data."""
  root = tmp_path_factory.mktemp('prune')
  config = tiny_config(root)
  config.model.update(num_heads=4, num_kv_heads=2, num_layers=3)
  tok = ByteTokenizer()
  cfg = ModelConfig.from_config(config.model, vocab_size=tok.vocab_size, seq_len=32)
  write_run(root / 'run', config, _params(cfg), tok)
  return root, config


def test_keep_everything_reproduces_the_run(tiny):
  root, _ = tiny
  summary = prune.prune_workdir(root / 'run', root / 'same', prune.Targets(),
                                calibration_rows=8, batch_size=4, log=lambda _: None)
  assert summary['params_before'] == summary['params_after']
  before, after = load_run(root / 'run'), load_run(root / 'same')
  assert after.config.model.head_dim == before.model_def.cfg.head_dim
  batch = _batch(2, 32, before.model_def.cfg.vocab_size)
  np.testing.assert_array_equal(_logits(after.model_def, after.params, batch),
                                _logits(before.model_def, before.params, batch))


def _converts_to_hf_with_our_logits(workdir, run, hf_dir):
  """The pruned run exports to Hugging Face, loads in transformers, gives our logits."""
  import torch
  import transformers
  hf.export_hf(workdir, hf_dir, log=lambda _: None)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  ids_BT = np.random.default_rng(0).integers(0, run.model_def.cfg.vocab_size, (2, 16))
  ours = jax.jit(lambda p, x: run.model_def.merge(p)(x))(run.params, jnp.asarray(ids_BT))
  with torch.no_grad():
    theirs = loaded(torch.tensor(ids_BT)).logits.float().numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-4, rtol=0)


def test_pruned_run_counts_loads_generates_and_trains(tiny):
  root, config = tiny
  targets = prune.Targets.parse(num_layers='2', num_kv_heads='1', mlp_dim='0.5', width='24')
  summary = prune.prune_workdir(root / 'run', root / 'small', targets, calibration_rows=8,
                                batch_size=4, log=lambda _: None)
  small = load_run(root / 'small')
  cfg = small.model_def.cfg
  assert (cfg.num_layers, cfg.num_kv_heads, cfg.num_heads, cfg.mlp_dim, cfg.width,
          cfg.head_dim) == (2, 1, 2, 32, 24, 8)
  n = sum(x.size for x in jax.tree.leaves(small.params))
  assert n == cfg.param_count() == summary['params_after'] < summary['params_before']
  kept = json.loads((root / 'small' / prune.PLAN_FILE).read_text())['kept']
  assert len(kept['channels']) == 24 and np.array(kept['neurons']).shape == (2, 32)
  text = api.load(root / 'small', log=lambda _: None).generate('the ', 5, temperature=0.0)
  assert isinstance(text, str)
  _converts_to_hf_with_our_logits(root / 'small', small, root / 'small_hf')
  config = config.copy_and_resolve_references()
  config.init_from = str(root / 'small')
  config.model.update(num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=32, width=24,
                      head_dim=8)
  config.train.steps, config.train.eval_every = 10, 10
  final = api.train(config, root / 'tuned')
  assert np.isfinite(final['eval/loss'])
  assert jnp.isfinite(jnp.asarray(final['train/loss']))
