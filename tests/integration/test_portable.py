"""A run is its workdir: trained on a text file, then the file and the data cache deleted
and the workdir moved elsewhere, it still generates, serves, exports and (on a new text
file) evaluates; LoRA, classification-head and MoE runs load through lm.run.load_run and
serve what their own model decodes."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient
from train_fixtures import subprocess_xla_flags

from configs.default import get_config
from lm import config as config_lib
from lm.data.tokenizers import ByteTokenizer
from lm.infer import Decoder, SamplingConfig
from lm.model import ModelDef
from lm.run import load_run, model_config, write_run
from lm.serve import server

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
TEXT = 'the quick brown fox jumps over the lazy dog. a stitch in time saves nine. '
GREEDY = SamplingConfig(temperature=0.0)


def _env():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  env['XLA_FLAGS'] = subprocess_xla_flags()  # one device in the subprocess
  return env


def _lm(*args):
  return subprocess.run([sys.executable, '-m', 'lm', *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=300, check=False)


def _served(run, prompt: str, max_tokens: int = 6) -> str:
  """The server's greedy completion of `prompt` (the app in-process, over TestClient)."""
  app, batcher = server.build(run, warmup=False, batch_wait_s=0.0)
  batcher.start()
  try:
    with TestClient(app) as client:
      r = client.post('/v1/completions', json={'prompt': prompt, 'max_tokens': max_tokens,
                                               'temperature': 0})
      assert r.status_code == 200, r.text
      return r.json()['choices'][0]['text']
  finally:
    batcher.stop()


def _decoded(run, prompt: str, max_tokens: int = 6, *, stop_at_eos: bool = True,
             bos: bool = False) -> str:
  """Greedy decoding in-process (the server also ends a completion at eos, and puts bos
  before the prompt: bos=True)."""
  tok = run.tokenizer
  ids = Decoder(run.model_def, cache_len=run.model_def.cfg.max_len).generate(
      run.params, [[tok.bos_id] * bos + tok.encode(prompt)], max_new_tokens=max_tokens,
      sampling=GREEDY,
      stop_tokens=[[tok.eos_id]] if stop_at_eos else ())[0]
  return tok.decode(ids)


@pytest.fixture(scope='module')
def moved(tmp_path_factory):
  """A run trained on corpus.txt whose corpus and data cache are gone and whose workdir
  was copied to another directory (and the original removed)."""
  from lm.train import train

  root = tmp_path_factory.mktemp('portable')
  corpus = root / 'corpus.txt'
  corpus.write_text(TEXT * 40)
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(root / 'cache')
  c.data.split, c.data.val_fraction, c.data.seq_len = 'tail', 0.2, 32
  c.data.tokenizer.kind = 'char'  # a tokenizer trained on the corpus: it must travel along
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.train.steps, c.train.batch_size = 4, 8
  c.train.steps_per_dispatch = c.train.log_every = c.train.eval_every = c.checkpoint.every = 4
  c.train.eval_batches, c.train.sample_tokens = 1, 0
  train(c, str(root / 'run'))
  corpus.unlink()
  shutil.rmtree(root / 'cache')
  shutil.copytree(root / 'run', root / 'elsewhere' / 'run')
  shutil.rmtree(root / 'run')
  return root / 'elsewhere' / 'run'


def test_a_moved_run_without_its_data_generates_serves_exports_and_evaluates(moved, tmp_path):
  run = load_run(moved)
  assert run.tokenizer.kind == 'char' and run.step == 4
  assert _served(run, 'the quick') == _decoded(run, 'the quick', bos=True)

  out = _lm('generate', f'--workdir={moved}', '--prompt=the quick', '--max_new_tokens=6',
            '--temperature=0')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout == 'the quick' + _decoded(run, 'the quick', stop_at_eos=False) + '\n'
  out = _lm('generate', f'--workdir={moved}', '--prompt=x', '--top_p=0')  # a bad setting
  assert out.returncode == 1 and out.stderr.startswith('error: top_p=0.0 must be in (0, 1]')


  pytest.importorskip('flatbuffers')
  out = _lm('export', f'--workdir={moved}', f'--out={tmp_path / "art"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / 'art' / 'artifact.json').read_text())['step'] == 4

  # Perplexity reads text: the run's own corpus is gone, which the error says; a new file
  # is scored with the run's own tokenizer.
  out = _lm('evaluate', f'--workdir={moved}', '--task=perplexity')
  assert out.returncode == 1 and 'corpus.txt' in out.stderr and 'Traceback' not in out.stderr
  new = tmp_path / 'new.txt'
  new.write_text('a stitch in time saves nine. the lazy dog. ' * 5)
  out = _lm('evaluate', f'--workdir={moved}', '--task=perplexity', f'--text_file={new}')
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((moved / 'eval' / 'perplexity.json').read_text())
  assert result['metrics']['source'] == f'text:{new}' and result['metrics']['tokens'] > 100
  assert np.isfinite(result['metrics']['loss'])


def _written(root: Path, name: str, path: Path, **overrides):
  """A tiny byte-level run written by lm.run.write_run with `overrides` (dotted with '__'),
  its weights random but larger than at init so that greedy choices are far from ties."""
  c = get_config()
  c.data.source, c.data.path = 'text', str(path)
  c.data.seq_len, c.data.tokenizer.kind = 32, 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  for key, value in overrides.items():
    *parents, leaf = key.split('__')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  c = config_lib.resolve(c, num_devices=jax.device_count())
  tokenizer = ByteTokenizer()
  model_def = ModelDef.create(model_config(c, tokenizer.vocab_size))
  params = jax.tree.map(lambda x: x * 3.0, model_def.init_params(jax.random.key(1)))
  # LoRA's B starts at zero: give the adapters weights, so that they change the output.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.normal(jax.random.key(2), x.shape, x.dtype) * 0.3
      if 'lora' in jax.tree_util.keystr(p) else x, params)
  write_run(root / name, c, params, tokenizer)
  return load_run(root / name)


def test_lora_classification_and_moe_runs_load_and_serve(tmp_path):
  text = tmp_path / 'a.txt'
  text.write_text(TEXT * 4)
  records = tmp_path / 'cls.jsonl'
  records.write_text(''.join(json.dumps({'text': f'review {i}', 'label': i % 2}) + '\n'
                             for i in range(8)))
  lora = _written(tmp_path, 'lora', text, lora__rank=4)
  assert lora.model_def.cfg.lora_rank == 4
  served = _served(lora, 'the quick')
  assert served == _decoded(lora, 'the quick', bos=True)
  # The adapters are part of what is served: zeroing them changes the text.
  no_adapters = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 0 if 'lora' in jax.tree_util.keystr(p) else x, lora.params)
  assert _decoded(dataclasses.replace(lora, params=no_adapters), 'the quick', bos=True) != served

  cls = _written(tmp_path, 'cls', records, data__format='classify', train__task='classify',
                 model__num_classes=2)
  assert cls.model_def.cfg.num_classes == 2
  assert _served(cls, 'review 3') == _decoded(cls, 'review 3', bos=True)

  moe = _written(tmp_path, 'moe', text, model__moe__num_experts=4, model__moe__top_k=2)
  assert moe.model_def.cfg.moe.num_experts == 4
  assert _served(moe, 'the quick') == _decoded(moe, 'the quick', bos=True)
