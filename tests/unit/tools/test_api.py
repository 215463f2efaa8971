"""lm.api: configs with overrides, a tiny run trained and loaded back, no absl flags needed.

One 20-step run (2 layers, width 32, byte tokens) is trained once per module by
`tiny_run` (tests/unit/tools/test_plot.py trains its own from `tiny_config`); loading it must
reproduce the eval loss the run logged at its last step.
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm import api
from lm.checkpoint import Checkpointer
from lm.config import ConfigError
from lm.errors import WorkdirError
from lm.train.metrics import read_metrics

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
SENTENCES = ['the quick brown fox jumps over the lazy dog.', 'a stitch in time saves nine.',
             'all that glitters is not gold.', 'to be or not to be, that is the question.']


def tiny_config(root: pathlib.Path):
  """The tiny run's config: a few repeated sentences in root/corpus, cached under root."""
  corpus = root / 'corpus'
  corpus.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(16):
    picks = rng.choice(len(SENTENCES), size=12)
    (corpus / f'doc{i:02d}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  return api.load_config('configs/default.py', {
      'data.source': 'text', 'data.path': str(corpus), 'data.cache_dir': str(root / 'cache'),
      'data.val_fraction': 0.25, 'data.tokenizer.kind': 'byte', 'data.seq_len': 32,
      'model.num_layers': 2, 'model.width': 32, 'model.mlp_dim': 64,
      'model.num_heads': 2, 'model.num_kv_heads': 2,
      'train.steps': 20, 'train.batch_size': 8, 'train.eval_every': 10,
      'train.log_every': 10, 'train.steps_per_dispatch': 10, 'train.eval_batches': 2,
      'train.sample_tokens': 0, 'checkpoint.every': 10, 'checkpoint.async_save': False,
  }, optimizer__lr=1e-2, optimizer__warmup_steps=5)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  root = tmp_path_factory.mktemp('tiny')
  final = api.train(tiny_config(root), root / 'run')
  return root / 'run', final


def test_load_config_overrides_and_names():
  c = api.load_config('shakespeare_char', {'train.steps': 7}, model__width=64)
  assert (c.train.steps, c.model.width, c.data.tokenizer.kind) == (7, 64, 'char')
  assert api.load_config().train.steps != 7  # the default file, untouched by the override above


def test_load_config_errors_name_the_key_and_file():
  with pytest.raises(ConfigError, match='train.stepz'):
    api.load_config(overrides={'train.stepz': 3})
  with pytest.raises(ConfigError, match='train.steps'):
    api.load_config(train__steps='many')
  with pytest.raises(ConfigError, match='no_such_config.*shakespeare_char'):
    api.load_config('no_such_config')


def test_train_returns_final_metrics(tiny_run):
  workdir, final = tiny_run
  rows = read_metrics(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [10, 20]
  assert final['eval/loss'] == pytest.approx(rows[-1]['eval/loss'])
  assert rows[-1]['train/loss'] < rows[0]['train/loss']


def test_load_restores_the_checkpoint(tiny_run):
  workdir, _ = tiny_run
  run = api.load(workdir, log=lambda _: None)
  assert run.step == 20
  assert run.tokenizer.decode(run.tokenizer.encode('abc')) == 'abc'
  with Checkpointer(workdir / 'checkpoints', read_only=True) as ckpt:
    assert ckpt.all_steps() == [10, 20]  # loading removed or wrote nothing
  # Parameters equal the checkpoint's: the eval loss matches the one logged at step 20.
  logged = read_metrics(workdir / 'metrics.jsonl')[-1]['eval/loss']
  assert run.evaluate()['eval/loss'] == pytest.approx(logged, abs=1e-5)
  # An earlier checkpoint differs: the comparison above can tell checkpoints apart.
  earlier = api.load(workdir, step=10, log=lambda _: None)
  assert earlier.evaluate()['eval/loss'] == pytest.approx(
      read_metrics(workdir / 'metrics.jsonl')[0]['eval/loss'], abs=1e-5)
  assert abs(earlier.evaluate()['eval/loss'] - logged) > 1e-3
  # .model is the NNX Transformer holding those parameters.
  tokens = np.array([run.tokenizer.encode('the quick brown')], np.int32)
  logits = np.asarray(run.model(jax.numpy.asarray(tokens)))
  assert logits.shape == (1, tokens.shape[1], run.model_def.cfg.vocab_size)
  assert np.isfinite(logits).all()


def test_generate_returns_text(tiny_run):
  run = api.load(tiny_run[0], log=lambda _: None)
  greedy = run.generate('the quick ', max_new_tokens=12, temperature=0.0)
  assert isinstance(greedy, str) and 0 < len(greedy) <= 12  # byte tokens: at most 1 char each
  assert run.generate('the quick ', max_new_tokens=12, temperature=0.0) == greedy
  assert run.generate('x', max_new_tokens=0) == ''


def test_attention_maps_from_a_loaded_run(tiny_run):
  run = api.load(tiny_run[0], log=lambda _: None)
  maps_LNTT, labels = run.attention_maps('the fox')
  assert maps_LNTT.shape == (2, 2, len(labels), len(labels)) and labels[:3] == ['t', 'h', 'e']
  np.testing.assert_allclose(maps_LNTT.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.triu(maps_LNTT, k=1) == 0)  # causal: nothing above the diagonal


def test_build_model_gives_a_fresh_model_of_the_config():
  config = api.load_config('configs/default.py', {'model.num_layers': 1, 'model.width': 32,
                                                   'model.num_heads': 2, 'model.mlp_dim': 64})
  model = api.build_model(config, vocab_size=50)
  logits_BTV = model(jax.numpy.zeros((1, 5), jax.numpy.int32))
  assert logits_BTV.shape == (1, 5, 50) and model.cfg.num_layers == 1
  with pytest.raises(ValueError, match='vocab_size'):
    api.build_model(config)  # vocab_size 0 in the config and none given


def test_a_run_saved_before_newer_config_keys_still_loads(tiny_run, tmp_path):
  import json
  import shutil
  old = tmp_path / 'old_run'
  shutil.copytree(tiny_run[0], old)
  saved = json.loads((old / 'config.json').read_text())
  del saved['mesh']['preset'], saved['model']['moe'], saved['lora'], saved['init_from']
  (old / 'config.json').write_text(json.dumps(saved))
  logs = []
  run = api.load(old, log=logs.append)
  assert 'mesh.preset' in logs[0] and 'model.moe' in logs[0] and 'lora' in logs[0]
  assert run.config.mesh.preset == 'fsdp_tensor' and run.config.model.moe.num_experts == 0
  np.testing.assert_allclose(run.evaluate()['eval/loss'],
                             api.load(tiny_run[0], log=lambda _: None).evaluate()['eval/loss'],
                             rtol=1e-6)


def test_load_errors_name_the_path(tmp_path):
  with pytest.raises(WorkdirError, match=f'{tmp_path} has no config.json'):
    api.load(tmp_path)


def test_import_parses_no_flags():
  """`import lm.api` and a call into it work with argv absl would reject."""
  code = ('import sys; sys.argv = ["x", "--no_such_flag"]; import lm.api as a; '
          'print(a.load_config(train__steps=3).train.steps)')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '3'
