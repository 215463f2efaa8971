"""`python -m lm.export`: the artifact's own run.py, in a Python that cannot import lm,
gives the tokens in-framework decoding gives (greedy and seeded sampling, float and int8)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip('flatbuffers', reason='jax.export serialization needs flatbuffers '
                    '(an install_requires of setup.py)')

from lm.errors import InputError  # noqa: E402
from lm.infer import Decoder, SamplingConfig  # noqa: E402
from lm.infer.export import export_artifact  # noqa: E402

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
GREEDY = SamplingConfig(temperature=0.0)


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one device in the subprocess
  env.pop('PYTHONPATH', None)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny byte-level model trained for 20 steps, and its float params loaded in-process."""
  from configs.default import get_config
  from lm.run import load_run
  from lm.train import train

  tmp = tmp_path_factory.mktemp('export')
  corpus = tmp / 'corpus'
  corpus.mkdir()
  (corpus / 'a.txt').write_text('the quick brown fox jumps over the lazy dog. ' * 80)
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(tmp / 'cache')
  c.data.split, c.data.val_fraction, c.data.seq_len = 'tail', 0.2, 32
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads, c.model.num_kv_heads = 4, 2
  c.optimizer.warmup_steps = 2
  c.train.steps, c.train.batch_size = 20, 8
  c.train.steps_per_dispatch = c.train.log_every = 10
  c.train.eval_every = c.checkpoint.every = 20
  c.train.eval_batches, c.train.sample_tokens = 1, 0
  workdir = tmp / 'run'
  train(c, str(workdir))
  run = load_run(workdir)  # on one device, as lm.export and lm.generate load it
  return workdir, (run.model_def, run.params, run.tokenizer, run.step)


# Runs a script with `lm` and flax made unimportable (the project may be pip-installed in
# this interpreter, so `python -I` alone would still find it): the artifact must not need them.
WITHOUT_LM = ('import runpy, sys; sys.modules.update(lm=None, flax=None); '
              'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')


def _runner(artifact: Path, *args: str) -> dict:
  run = subprocess.run([sys.executable, '-I', '-c', WITHOUT_LM, str(artifact / 'run.py'),
                        '--json', *args],
                       cwd=artifact.parent, env=_env(), capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout)


def _import_runner(artifact: Path):
  spec = importlib.util.spec_from_file_location(f'run_{artifact.name}', artifact / 'run.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_cli_artifact_runs_without_lm_and_equals_in_framework_decoding(trained, tmp_path):
  workdir, (md, params, tok, _) = trained
  art = tmp_path / 'art'
  run = subprocess.run([sys.executable, '-m', 'lm.export', f'--workdir={workdir}',
                        f'--out={art}', '--max_len=64'], cwd=REPO,
                       env={**_env(), 'PYTHONPATH': str(REPO)}, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  for name in ('prefill.jax', 'step.jax', 'weights.npz', 'run.py', 'config.json',
               'artifact.json', 'tokenizer/tokenizer.json'):
    assert (art / name).is_file(), name
  assert 'import lm' not in (art / 'run.py').read_text()
  manifest = json.loads((art / 'artifact.json').read_text())
  assert manifest['cache_len'] == 64 and manifest['batch_size'] == 0

  # Under the runner's harness, lm and flax cannot be imported.
  (art.parent / 'probe.py').write_text('import lm\n')
  probe = subprocess.run([sys.executable, '-I', '-c', WITHOUT_LM, str(art.parent / 'probe.py')],
                         cwd=art.parent, env=_env(), capture_output=True, text=True, check=False)
  assert probe.returncode != 0 and 'ModuleNotFoundError' in probe.stderr

  prompts = [tok.encode('the quick'), tok.encode('over the lazy dog. ')]
  decoder = Decoder(md)
  want = decoder.generate(params, prompts, max_new_tokens=20, sampling=GREEDY)
  got = _runner(art, *[f'--prompt_ids={",".join(map(str, p))}' for p in prompts],
                '--max_new_tokens=20', '--temperature=0')
  assert got['tokens'] == want
  assert len({tuple(r) for r in want}) > 1

  hot = SamplingConfig(temperature=1.0, top_k=20)
  want = decoder.generate(params, prompts, max_new_tokens=12, sampling=hot, seed=3)
  assert want != decoder.generate(params, prompts, max_new_tokens=12, sampling=hot, seed=4)
  got = _runner(art, '--prompt=the quick', '--prompt=over the lazy dog. ', '--max_new_tokens=12',
                '--temperature=1', '--top_k=20', '--seed=3')
  assert got['tokens'] == want
  assert got['texts'] == [tok.decode(r) for r in want]


def test_int8_fixed_batch_artifact_equals_the_int8_decoder(trained, tmp_path):
  from lm.model.quantize import quantize

  _, (md, params, tok, _) = trained
  qdef, qparams = quantize(md, params)
  art = tmp_path / 'int8'
  manifest = export_artifact(qdef, qparams, tok, art, cache_len=48, batch_size=2)
  assert manifest['quantize'] == 'int8'
  weights = np.load(art / 'weights.npz')
  assert weights['embed'].dtype == np.int8 and weights['embed_scale'].dtype == np.float32
  assert manifest['weight_bytes'] < 0.3 * sum(x.nbytes for x in jax.tree.leaves(params))

  runner = _import_runner(art)
  artifact = runner.Artifact(art)
  prompts = [tok.encode('the quick brown'), tok.encode('fox')]
  want = Decoder(qdef).generate(qparams, prompts, max_new_tokens=10, sampling=GREEDY)
  assert artifact.generate(prompts, max_new_tokens=10, temperature=0.0) == want
  with pytest.raises(runner.ArtifactError, match='exported for batch size 2'):
    artifact.generate(prompts[:1], max_new_tokens=4)
  with pytest.raises(runner.ArtifactError, match='exceeds the exported cache length 48'):
    artifact.generate(prompts, max_new_tokens=40)
  with pytest.raises(InputError, match='not empty'):
    export_artifact(qdef, qparams, tok, art, cache_len=48)


def test_cli_errors_name_the_problem(trained, tmp_path):
  workdir, _ = trained
  env = {**_env(), 'PYTHONPATH': str(REPO)}

  def export(*args):
    return subprocess.run([sys.executable, '-m', 'lm.export', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)

  run = export(f'--workdir={tmp_path}', f'--out={tmp_path / "a"}')
  assert run.returncode == 1 and 'no config.json' in run.stderr and str(tmp_path) in run.stderr
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('x')
  run = export(f'--workdir={workdir}', f'--out={tmp_path / "full"}')
  assert run.returncode == 1 and 'is not empty' in run.stderr
  run = export(f'--workdir={workdir}')
  assert run.returncode == 1 and '--out' in run.stderr


@pytest.mark.slow
def test_generate_cli_int8_on_a_tensor_parallel_mesh_equals_the_in_process_decoder(trained):
  from lm.model.quantize import quantize

  workdir, (md, params, tok, _) = trained
  qdef, qparams = quantize(md, params)
  want = Decoder(qdef).generate(qparams, [tok.encode('the quick')], max_new_tokens=12,
                                sampling=GREEDY)
  run = subprocess.run([sys.executable, '-m', 'lm.generate', f'--workdir={workdir}',
                        '--prompt=the quick', '--max_new_tokens=12', '--temperature=0',
                        '--quantize=int8', '--mesh_tensor=2', '--cpu_devices=2'], cwd=REPO,
                       env={**_env(), 'PYTHONPATH': str(REPO)}, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout == 'the quick' + tok.decode(want[0]) + '\n'


def test_runner_tokenizers_give_lm_ids_and_text(tmp_path):
  """byte, char, SentencePiece and HF tokenizers: the runner's own copies encode and decode
  exactly as lm.data.tokenizers does (lm is only used here to build and save them)."""
  from lm.data import tokenizers
  from lm.data.tokenizers import spm

  texts = ['the quick brown fox.', 'héllo wörld ✓ \u2581 mark\n  indented', 'unseen: Ωμέγα']
  train = [texts[0] * 30 + texts[1] * 30]
  built = {'byte': tokenizers.ByteTokenizer(), 'char': tokenizers.CharTokenizer.train(train),
           'sentencepiece': tokenizers.SentencePieceTokenizer(spm.train(
               train * 20, model_type='bpe', vocab_size=300, max_chars=0))}
  hf = pytest.importorskip('tokenizers')
  bpe = hf.Tokenizer(hf.models.BPE())  # a small byte-level BPE, as GPT-2's
  bpe.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = hf.decoders.ByteLevel()
  bpe.train_from_iterator(train * 10, hf.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<pad>', '<s>', '</s>'], show_progress=False,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  (tmp_path / 'hf_src').mkdir()
  bpe.save(str(tmp_path / 'hf_src' / 'tokenizer.json'))
  (tmp_path / 'hf_src' / 'tokenizer_config.json').write_text(json.dumps(
      {'bos_token': '<s>', 'pad_token': '<pad>', 'eos_token': '</s>'}))
  built['hf'] = tokenizers.HFTokenizer.from_hf_dir(tmp_path / 'hf_src')

  runner = _import_runner(_write_runner(tmp_path))
  for kind, tok in built.items():
    (tmp_path / kind).mkdir()
    tok.save(tmp_path / kind)
    mine = runner.Tokenizer(tmp_path / kind)
    assert mine.vocab_size == tok.vocab_size, kind
    for text in texts:
      ids = tok.encode(text)
      assert mine.encode(text) == ids, (kind, text)
      assert mine.decode([tok.bos_id, *ids, tok.eos_id, 10**6]) == tok.decode(ids), kind


def _write_runner(directory: Path) -> Path:
  from lm.infer.export import RUNNER_SOURCE
  (directory / 'run.py').write_text(RUNNER_SOURCE.read_text())
  return directory
