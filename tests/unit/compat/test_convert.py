"""lm.compat.hf (python -m lm.convert): Hugging Face GPT-2 / LLaMA checkpoints in and out,
checked against transformers.

Small random transformers models (every parameter perturbed, so biases and norm scales
count) are saved with save_pretrained; the imported workdir's logits must equal torch's,
and our random models exported with to-hf must give transformers the logits we compute.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from lm import api  # noqa: E402
from lm import config as config_lib  # noqa: E402
from lm import workdir as workdir_lib  # noqa: E402
from lm.compat import hf as convert  # noqa: E402
from lm.compat import hf_mapping  # noqa: E402
from lm.data.tokenizers import ByteTokenizer  # noqa: E402
from lm.data.tokenizers.hf import vocab_size_of  # noqa: E402
from lm.errors import ConversionError, UserError  # noqa: E402
from lm.model import ModelConfig, ModelDef  # noqa: E402
from lm.run import load_run, write_run  # noqa: E402

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
VOCAB = 300  # > the byte tokenizer's 259 ids, which the tiny base config uses
TOL = 1e-4
SENTENCES = ['the quick brown fox jumps over the lazy dog.', 'a stitch in time saves nine.',
             'all that glitters is not gold.', 'to be or not to be, that is the question.']


def hf_model(kind: str):
  """A small random transformers model of family `kind`, every parameter perturbed."""
  torch.manual_seed({'gpt2': 0, 'llama_gqa': 1, 'llama_tied': 2}[kind])
  if kind == 'gpt2':
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        bos_token_id=1, eos_token_id=2))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2 if kind == 'llama_gqa' else 1,
        rope_theta=500.0, max_position_embeddings=64,
        tie_word_embeddings=kind == 'llama_tied'))
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 1.0 if p.ndim == 1 and ('norm' in name or 'ln' in name) else 0.0
      p.copy_(scale + 0.2 * torch.randn_like(p))
  return model.eval()


def our_logits(model_def, params, ids_BT: np.ndarray) -> np.ndarray:
  """Our model's float32 logits (one jit: op-by-op dispatch compiles every op)."""
  return np.asarray(jax.jit(lambda p, x: model_def.merge(p)(x))(params, jnp.asarray(ids_BT)))


def torch_logits(model, ids_BT: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids_BT)).logits.float().numpy()


@pytest.fixture(scope='module')
def base_config(tmp_path_factory):
  """The tiny experiment config imports start from: a few sentences, byte tokens."""
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  for i in range(8):
    picks = rng.choice(len(SENTENCES), size=12)
    (root / f'doc{i}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  return api.load_config('configs/default.py', {
      'data.source': 'text', 'data.path': str(root), 'data.cache_dir': str(root / 'cache'),
      'data.val_fraction': 0.25, 'data.tokenizer.kind': 'byte', 'data.seq_len': 16,
      'train.steps': 2, 'train.batch_size': 8, 'train.steps_per_dispatch': 1,
      'train.log_every': 1, 'train.eval_every': 2, 'train.eval_batches': 1,
      'train.sample_tokens': 0, 'checkpoint.every': 2, 'checkpoint.async_save': False,
      'optimizer.warmup_steps': 0, 'optimizer.lr': 1e-3, 'optimizer.min_lr': 1e-4})


IDS_BT = np.random.default_rng(0).integers(0, VOCAB, (3, 16))


@pytest.mark.parametrize('kind', ['gpt2', 'llama_tied'])  # llama_gqa (untied): the e2e test
def test_from_hf_logits_equal_transformers(kind, tmp_path, base_config):
  model = hf_model(kind)
  model.save_pretrained(tmp_path / 'hf')
  assert (tmp_path / 'hf' / 'model.safetensors').is_file()
  convert.import_hf(tmp_path / 'hf', tmp_path / 'work', base_config, log=lambda _: None)

  run = load_run(tmp_path / 'work')
  assert run.step == 0
  model_def = run.model_def
  ours = our_logits(model_def, run.params, IDS_BT)
  np.testing.assert_allclose(ours, torch_logits(model, IDS_BT), atol=TOL, rtol=0)
  m = model_def.cfg
  assert (m.num_kv_heads, m.tie_embeddings) == {
      'gpt2': (4, True), 'llama_gqa': (2, False), 'llama_tied': (1, True)}[kind]
  if kind != 'gpt2':
    assert m.rope_theta == 500.0


def random_workdir(root: pathlib.Path, base_config, family: str, **model) -> tuple:
  """A run (lm.run.write_run) of one of our models with random (perturbed) weights."""
  arch = (dict(norm='layernorm', mlp='gelu', position='learned', use_bias=True,
               tie_embeddings=True, num_kv_heads=4) if family == 'gpt2' else
          dict(norm='rmsnorm', mlp='swiglu', position='rope', use_bias=False))
  config = config_lib.ConfigDict(base_config.to_dict())
  config.model.update({'vocab_size': VOCAB, 'num_layers': 2, 'width': 32, 'num_heads': 4,
                       'num_kv_heads': 2, 'mlp_dim': 48, 'max_len': 32, 'rope_theta': 2000.0,
                       **arch, **model})
  config = config_lib.resolve(config, num_devices=jax.device_count())
  model_def = ModelDef.create(ModelConfig.from_config(config.model))
  # Random weights from numpy: a jit'd jax.random init of every parameter compiles for ~8 s.
  rng = np.random.default_rng(7)
  shapes = jax.eval_shape(model_def.init_params, jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((path[-1].key == 'scale') + 0.2 * rng.standard_normal(s.shape),
                                  s.dtype), shapes)
  workdir = root / 'work'
  write_run(workdir, config, params, ByteTokenizer())
  return workdir, model_def, params


@pytest.mark.parametrize('family,model', [
    ('gpt2', {}), ('llama', {'tie_embeddings': False}), ('llama', {'tie_embeddings': True,
                                                                   'num_kv_heads': 1}),
    ('llama', {'width': 24, 'head_dim': 16})],  # a pruned run's shape: heads wider than width
    ids=['gpt2', 'llama_gqa', 'llama_tied', 'llama_pruned'])
def test_to_hf_loads_in_transformers_with_our_logits(family, model, tmp_path, base_config):
  workdir, model_def, params = random_workdir(tmp_path, base_config, family, **model)
  convert.export_hf(workdir, tmp_path / 'hf', log=lambda _: None)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
  assert type(loaded).__name__ == {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM'}[family]
  ours = our_logits(model_def, params, IDS_BT)
  np.testing.assert_allclose(torch_logits(loaded, IDS_BT), ours, atol=TOL, rtol=0)


def write_hf_tokenizer(directory: pathlib.Path, vocab_size: int) -> None:
  """A byte-level BPE trained here (no download), saved as transformers saves one."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(SENTENCES * 20, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=['<pad>', '<s>', '</s>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<s>', eos_token='</s>', pad_token='<pad>'
  ).save_pretrained(directory)


@pytest.mark.slow
def test_import_with_tokenizer_then_train_generate_and_export(tmp_path, base_config):
  """CLI from-hf of a LLaMA with its tokenizer.json -> 2 training steps resumed from the
  imported checkpoint -> generate -> CLI to-hf, which transformers loads with the tokenizer."""
  model = hf_model('llama_gqa')
  model.save_pretrained(tmp_path / 'hf')
  write_hf_tokenizer(tmp_path / 'hf', VOCAB)
  work = tmp_path / 'work'
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  overrides = [f'--config.{k}={v}' for k, v in (
      ('data.source', 'text'), ('data.path', base_config.data.path),
      ('data.cache_dir', base_config.data.cache_dir), ('data.seq_len', 16))]
  subprocess.run([sys.executable, '-m', 'lm.convert', 'from-hf', f'--hf_dir={tmp_path / "hf"}',
                  f'--workdir={work}', *overrides], check=True, cwd=REPO, env=env,
                 capture_output=True, text=True)
  assert {'config.json', 'config.py', 'checkpoints', 'tokenizer', 'hf_tokenizer'} <= set(
      os.listdir(work))
  assert (work / 'hf_tokenizer' / 'tokenizer.json').is_file()
  assert workdir_lib.load_tokenizer(work).kind == 'hf'  # the run's own copy

  imported = api.load(work, log=lambda _: None)
  assert imported.tokenizer.kind == 'hf'
  np.testing.assert_allclose(our_logits(imported.model_def, imported.params, IDS_BT),
                             torch_logits(model, IDS_BT), atol=TOL, rtol=0)
  text = 'a stitch in time'
  assert imported.tokenizer.decode(imported.tokenizer.encode(text)) == text

  config = api.load_config(work / 'config.py', {
      'train.steps': 2, 'train.batch_size': 8, 'train.steps_per_dispatch': 1,
      'train.log_every': 1, 'train.eval_every': 2, 'train.eval_batches': 1,
      'train.sample_tokens': 0, 'checkpoint.every': 2, 'checkpoint.async_save': False})
  assert (config.data.tokenizer.kind, config.model.num_kv_heads) == ('hf', 2)
  final = api.train(config, work)
  assert np.isfinite(final['eval/loss'])
  run = api.load(work, log=lambda _: None)
  assert run.step == 2
  # Training went on from the imported weights (two Adam steps of lr 1e-3 move each weight
  # by a few 1e-3; a fresh init would differ from them by ~0.2).
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), run.params,
                       imported.params)
  assert 0 < max(jax.tree.leaves(moved)) < 0.01
  assert isinstance(run.generate('the quick', max_new_tokens=5, temperature=0.0), str)

  subprocess.run([sys.executable, '-m', 'lm.convert', 'to-hf', f'--workdir={work}',
                  f'--hf_dir={tmp_path / "out"}'], check=True, cwd=REPO, env=env,
                 capture_output=True, text=True)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  np.testing.assert_allclose(torch_logits(loaded, IDS_BT),
                             our_logits(run.model_def, run.params, IDS_BT), atol=TOL, rtol=0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'out')
  assert tokenizer.decode(tokenizer(text)['input_ids'], skip_special_tokens=True) == text
  hf_config = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert hf_config['eos_token_id'] == imported.tokenizer.eos_id


# ---- errors -------------------------------------------------------------------------------


def saved(tmp_path: pathlib.Path, kind: str = 'llama_gqa') -> pathlib.Path:
  hf_model(kind).save_pretrained(tmp_path / 'hf')
  return tmp_path / 'hf'


def edit_config(hf_dir: pathlib.Path, **changes) -> None:
  path = hf_dir / 'config.json'
  path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_unsupported_model_type_and_features_are_named(tmp_path, base_config):
  hf_dir = saved(tmp_path)
  edit_config(hf_dir, model_type='mixtral')
  with pytest.raises(ConversionError, match="model_type='mixtral'.*gpt2, llama"):
    convert.import_hf(hf_dir, tmp_path / 'w1', base_config, log=lambda _: None)
  edit_config(hf_dir, model_type='llama', hidden_act='gelu',
              rope_parameters={'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 4.0})
  with pytest.raises(ConversionError, match='hidden_act'):
    convert.import_hf(hf_dir, tmp_path / 'w2', base_config, log=lambda _: None)
  edit_config(hf_dir, hidden_act='silu')
  with pytest.raises(ConversionError, match="RoPE type 'yarn'"):
    convert.import_hf(hf_dir, tmp_path / 'w3', base_config, log=lambda _: None)
  assert not (tmp_path / 'w3').exists()  # nothing written for a model it refused


def test_missing_files_are_named(tmp_path, base_config):
  with pytest.raises(ConversionError, match='not a directory'):
    convert.import_hf(tmp_path / 'nope', tmp_path / 'w', base_config, log=lambda _: None)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ConversionError, match='empty/config.json not found'):
    convert.import_hf(tmp_path / 'empty', tmp_path / 'w', base_config, log=lambda _: None)
  hf_dir = saved(tmp_path)
  (hf_dir / 'model.safetensors').rename(hf_dir / 'pytorch_model.bin')
  with pytest.raises(ConversionError, match=r'no model.safetensors.*pytorch_model.bin'):
    convert.import_hf(hf_dir, tmp_path / 'w', base_config, log=lambda _: None)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, base_config):
  hf_dir = saved(tmp_path)
  edit_config(hf_dir, intermediate_size=64)
  with pytest.raises(ConversionError,
                     match=r"'model.layers.0.mlp.gate_proj.weight'.*\(48, 32\).*\(64, 32\)"):
    convert.import_hf(hf_dir, tmp_path / 'w', base_config, log=lambda _: None)


def test_vocab_mismatch_is_an_error(tmp_path, base_config):
  hf_dir = saved(tmp_path)
  write_hf_tokenizer(hf_dir, VOCAB + 40)  # more ids than the model's embedding rows
  n = vocab_size_of(hf_dir)
  assert n > VOCAB
  with pytest.raises(ConversionError,
                     match=rf'vocabulary mismatch.*tokenizer.json has {n} ids.*vocab_size=300'):
    convert.import_hf(hf_dir, tmp_path / 'w', base_config, log=lambda _: None)
  small = saved(tmp_path / 'small')
  edit_config(small, vocab_size=200)  # the byte tokenizer of the base config needs 259
  with pytest.raises(ConversionError, match=r'vocabulary mismatch.*\(byte\) has 259 ids'):
    convert.import_hf(small, tmp_path / 'w', base_config, log=lambda _: None)


def test_export_refuses_a_model_no_hf_family_expresses(tmp_path, base_config):
  workdir, _, _ = random_workdir(tmp_path, base_config, 'llama', mlp='gelu')
  with pytest.raises(ConversionError, match=r"LLaMA needs model.mlp='swiglu'"):
    convert.export_hf(workdir, tmp_path / 'hf', log=lambda _: None)
  assert not (tmp_path / 'hf').exists()


def test_import_refuses_an_existing_run_and_cli_errors_are_one_line(tmp_path, base_config):
  hf_dir = saved(tmp_path)
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(UserError, match='--workdir=.*run already exists and is not empty'):
    convert.import_hf(hf_dir, tmp_path / 'run', base_config, log=lambda _: None)
  assert os.listdir(tmp_path / 'run') == ['checkpoints']
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-m', 'lm.convert', 'to-hf', f'--workdir={tmp_path}',
                         f'--hf_dir={tmp_path / "out"}'], cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: workdir {tmp_path} has no config.json; is it a training workdir '
      '(python -m lm.main --workdir=...)?')


def test_model_config_round_trips_through_hf_config():
  for hf_config in (hf_model('gpt2').config.to_dict(), hf_model('llama_gqa').config.to_dict()):
    cfg = hf_mapping.config_from_hf(hf_config)
    assert hf_mapping.config_from_hf(hf_mapping.config_to_hf(cfg)) == cfg
  assert hf_mapping.config_from_hf(hf_model('llama_gqa').config.to_dict()).rope_theta == 500.0


def test_gpt2_hub_names_and_mask_buffers_are_accepted_unknown_tensors_are_not():
  """Hub GPT-2 files lack the 'transformer.' prefix and carry attention-mask buffers."""
  hf = hf_mapping
  model = hf_model('gpt2')
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  cfg = hf.config_from_hf(model.config.to_dict())
  want = hf.params_from_hf(cfg, tensors)
  hub = {k.removeprefix('transformer.'): v for k, v in tensors.items() if k != 'lm_head.weight'}
  hub.update({f'h.{i}.attn.bias': np.tril(np.ones((1, 1, 32, 32))) for i in range(2)})
  jax.tree.map(np.testing.assert_array_equal, hf.params_from_hf(cfg, hub), want)
  hub['h.1.mlp.c_gate.weight'] = np.zeros((32, 128))
  with pytest.raises(ConversionError, match='no place for: h.1.mlp.c_gate.weight'):
    hf.params_from_hf(cfg, hub)


def test_sharded_safetensors_are_read_through_their_index(tmp_path):
  model = hf_model('gpt2')
  model.save_pretrained(tmp_path / 'one')
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='50KB')
  assert (tmp_path / 'sharded' / 'model.safetensors.index.json').is_file()
  one, _ = convert.read_hf_tensors(tmp_path / 'one')
  sharded, source = convert.read_hf_tensors(tmp_path / 'sharded')
  assert 'index.json' in source and sorted(sharded) == sorted(one)
  for name, x in one.items():
    np.testing.assert_array_equal(sharded[name], x)
  index = json.loads((tmp_path / 'sharded' / 'model.safetensors.index.json').read_text())
  shards = sorted(set(index['weight_map'].values()))
  assert len(shards) > 1
  (tmp_path / 'sharded' / shards[-1]).unlink()
  with pytest.raises(ConversionError, match=f'{shards[-1]}, named in'):
    convert.read_hf_tensors(tmp_path / 'sharded')


def test_truncated_safetensors_is_one_line_naming_the_file_and_nothing_is_written(tmp_path):
  hf_dir = saved(tmp_path)
  weights = hf_dir / 'model.safetensors'
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])  # a cut-off download
  with pytest.raises(ConversionError, match=rf'{weights} is not a complete safetensors file'):
    convert.read_hf_tensors(hf_dir)
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-m', 'lm', 'convert', 'from-hf', f'--hf_dir={hf_dir}',
                         f'--workdir={tmp_path / "work"}', '--config.data.tokenizer.kind=byte'],
                        cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {weights} is not a complete safetensors file')
  assert 'save_pretrained it again' in last
  assert not (tmp_path / 'work').exists()


def test_export_refuses_a_lora_run_before_reading_weights(tmp_path, base_config):
  workdir, _, _ = random_workdir(tmp_path, base_config, 'llama')
  config = workdir_lib.read_config(workdir)
  config.lora.rank = 2
  workdir_lib.write_config(workdir, config)
  with pytest.raises(ConversionError, match='no LoRA adapters.*lora_merge'):
    convert.export_hf(workdir, tmp_path / 'hf', log=lambda _: None)
  assert not (tmp_path / 'hf').exists()


def test_round_trip_with_tokenizer_needs_neither_the_hf_dir_nor_its_copy(tmp_path, base_config):
  """from-hf with a tokenizer.json, then the HF directory and the run's hf_tokenizer/ copy
  deleted: to-hf still writes a tokenizer transformers loads (from the run's own tokenizer/)
  and the same logits."""
  model = hf_model('llama_gqa')
  model.save_pretrained(tmp_path / 'hf')
  write_hf_tokenizer(tmp_path / 'hf', VOCAB)
  convert.import_hf(tmp_path / 'hf', tmp_path / 'work', base_config, log=lambda _: None)
  shutil.rmtree(tmp_path / 'hf')
  shutil.rmtree(tmp_path / 'work' / 'hf_tokenizer')
  convert.export_hf(tmp_path / 'work', tmp_path / 'out', log=lambda _: None)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  np.testing.assert_allclose(torch_logits(loaded, IDS_BT), torch_logits(model, IDS_BT),
                             atol=TOL, rtol=0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'out')
  text = 'a stitch in time'
  assert tokenizer.decode(tokenizer(text)['input_ids'], skip_special_tokens=True) == text
  assert tokenizer.eos_token == '</s>' and tokenizer.pad_token == '<pad>'
