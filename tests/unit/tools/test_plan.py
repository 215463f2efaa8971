"""lm.plan: exact parameter/optimizer bytes, a compiled check that agrees, presets planned
abstractly, and the command re-running itself with the devices it was asked for."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs import default, gpt2_124m, llama_1b, llama_8b
from lm import config as config_lib
from lm import parallel
from lm.model import ModelDef
from lm.tools import plan as plan_lib
from lm.train.optimizer import build_optimizer
from lm.train.state import init_state, state_shardings

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
TINY_FLAGS = [
    '--config.data.tokenizer.kind=byte', '--config.data.seq_len=32',
    '--config.model.num_layers=2', '--config.model.width=64', '--config.model.num_heads=4',
    '--config.model.num_kv_heads=2', '--config.model.mlp_dim=128', '--config.train.batch_size=16',
    '--config.train.steps_per_dispatch=1', '--config.train.log_every=1',
    '--config.train.eval_every=1', '--config.checkpoint.every=1',
]


def _tiny(data=2, fsdp=2, tensor=2, **model):
  c = default.get_config()
  for flag in TINY_FLAGS:
    key, value = flag.removeprefix('--config.').split('=')
    section, _, leaf = key.rpartition('.')
    node = c
    for part in section.split('.'):
      node = node[part]
    node[leaf] = type(node[leaf])(value)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
  for k, v in model.items():
    c.model[k] = v
  return c


def _bytes_on(tree, device) -> int:
  return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards
             if s.device == device)


def test_parameter_and_optimizer_bytes_equal_the_allocated_state():
  plan = plan_lib.make_plan(_tiny(), num_devices=8)
  cfg = plan.config
  model_def = ModelDef.create(plan.model_cfg)
  optimizer, _ = build_optimizer(cfg.optimizer, cfg.train.steps)
  mesh = parallel.build_mesh(cfg.mesh)
  state = init_state(model_def, optimizer, cfg.seed,
                     state_shardings(model_def, optimizer, mesh, parallel.rules_for(cfg.mesh)))
  for name, tree in (('parameters', state['params']), ('optimizer state', state['opt_state'])):
    total, per_device = plan.memory[name]
    assert total == sum(x.nbytes for x in jax.tree.leaves(tree)), name
    assert per_device == max(_bytes_on(tree, d) for d in jax.devices()), name
  assert plan.memory['parameters'][0] == 4 * plan.param_count  # float32
  # fsdp x tensor = 4 ways: every matrix is split, only the small norm scales are not.
  assert plan.per_device('parameters') < plan.memory['parameters'][0] / 3
  assert plan.per_device('gradients') == plan.per_device('parameters')


def test_compiled_memory_analysis_agrees_with_the_estimate():
  # bfloat16 parameters also check that the train step keeps their dtype through the scan.
  plan = plan_lib.make_plan(_tiny(param_dtype='bfloat16', dtype='bfloat16'), num_devices=8)
  plan.xla = plan_lib.compile_memory(plan)
  state = (plan.per_device('parameters') + plan.per_device('optimizer state')
           + plan.other_state_bytes)
  assert plan.xla['argument'] == state + plan.batch_bytes_per_device
  assert plan.xla['alias'] == state  # the donated state is updated in place
  transient = plan.per_device('gradients') + plan.per_device('activations')
  assert 0.5 < plan.xla['temp'] / transient < 3, (plan.xla, transient)
  text = plan_lib.format_plan(plan, device_memory_gib=16)
  assert 'XLA memory analysis' in text and plan_lib.human_bytes(plan.xla['temp']) in text
  assert 'fits in 16 GiB' in text


def test_activation_estimate_follows_remat_and_tensor_parallelism():
  def act(n=8, data=2, fsdp=2, tensor=2, **kw):
    plan = plan_lib.make_plan(_tiny(data, fsdp, tensor, **kw), num_devices=n)
    return plan.per_device('activations')
  assert act(remat='none') > act(remat='dots') > act(remat='full')
  # The same 4 rows per device; a tensor axis of 2 splits the head/MLP/vocab activations.
  assert act(n=8, tensor=2) < act(n=4, tensor=1)


@pytest.mark.parametrize('preset', [gpt2_124m, llama_1b, llama_8b],
                         ids=['gpt2_124m', 'llama_1b', 'llama_8b'])
def test_presets_validate_and_plan_abstractly(preset):
  config = preset.get_config()
  config_lib.validate(config, num_devices=8)
  plan = plan_lib.make_plan(config, num_devices=8)
  m = plan.model_cfg
  assert plan.memory['parameters'][0] == m.param_count() * m.jnp_param_dtype.itemsize
  assert plan.total_per_device > plan.per_device('parameters') > 0


def test_presets_have_the_published_parameter_counts():
  def count(preset, **model):
    c = preset.get_config()
    c.model.update(model)
    return plan_lib.make_plan(c, num_devices=8).param_count
  assert count(llama_8b) == 8_030_261_248  # Meta-Llama-3-8B
  assert count(llama_1b) == 1_235_814_400  # Llama-3.2-1B
  assert count(gpt2_124m, vocab_size=50257) == 124_439_808  # GPT-2 small, unpadded vocab


def test_char_tokenizer_needs_a_vocab_size():
  c = _tiny()
  c.data.tokenizer.kind = 'char'
  with pytest.raises(config_lib.ConfigError, match='--vocab_size'):
    plan_lib.make_plan(c, num_devices=8)
  assert plan_lib.make_plan(c, num_devices=8, vocab_size=80).model_cfg.vocab_size == 80


def _plan_cli(*args: str, env_extra=None) -> subprocess.CompletedProcess:
  env = dict(os.environ)  # 8 fake devices (conftest.py) unless the plan asks for others
  env.update(env_extra or {})
  return subprocess.run([sys.executable, '-m', 'lm.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_reexecutes_with_the_asked_device_count_and_compiles():
  r = _plan_cli('--config=configs/default.py', '--devices=16', '--config.mesh.data=4',
                '--config.mesh.fsdp=2', '--config.mesh.tensor=2', *TINY_FLAGS)
  assert r.returncode == 0, r.stderr
  assert 'on 16 device(s)' in r.stdout
  assert 'mesh data=4, fsdp=2, sequence=1, expert=1, tensor=2' in r.stdout
  assert 'XLA memory analysis of the compiled train step (per device, 16 CPU devices' in r.stdout


@pytest.mark.parametrize('preset,devices,count', [
    ('gpt2_124m', 8, '124,475,904'), ('llama_8b', 64, '8,030,261,248')])
def test_cli_plans_presets_without_allocating_them(preset, devices, count):
  # A wrapper reports the largest resident size of the plan (and its re-executed child):
  # GPT-2's float32 parameters and Adam moments are 1.5 GB, LLaMA-3-8B's parameters 32 GB;
  # jax and the abstract model take ~0.3 GB.
  code = ('import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); '
          'print("maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); '
          'sys.exit(r.returncode)')
  r = subprocess.run([sys.executable, '-c', code, sys.executable, '-m', 'lm.plan',
                      f'--config=configs/{preset}.py', f'--devices={devices}', '--compile=false'],
                     cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr
  assert f'parameters: {count}' in r.stdout and f'on {devices} device(s)' in r.stdout
  rss_gib = int(r.stdout.split('maxrss_kib')[1].split()[0]) / 2**20
  assert rss_gib < 1, rss_gib


def test_cli_rejects_a_bad_device_count():
  r = _plan_cli('--config=configs/default.py', '--devices=-2')
  assert r.returncode != 0 and '--devices=-2 must be >= 1' in r.stderr


def test_a_lora_plan_holds_only_the_adapters_moments_and_compiles_that_step():
  c = _tiny()
  c.lora.rank = 4
  plan = plan_lib.make_plan(c, num_devices=8)
  state = plan.setup.init_state()  # the state training would allocate (lm.train.build)
  for name, tree in (('parameters', state['params']), ('optimizer state', state['opt_state'])):
    assert plan.memory[name][0] == sum(x.nbytes for x in jax.tree.leaves(tree)), name
  assert plan.memory['optimizer state'][0] < 0.2 * plan.memory['parameters'][0]
  plan.xla = plan_lib.compile_memory(plan)
  assert plan.xla['argument'] == (plan.per_device('parameters') + plan.other_state_bytes
                                  + plan.per_device('optimizer state')
                                  + plan.batch_bytes_per_device)


def test_a_classifier_plan_compiles_the_classification_batch(tmp_path):
  c = _tiny()
  c.train.task, c.data.format, c.model.num_classes = 'classify', 'classify', 3
  c.data.path = str(tmp_path / 'train.jsonl')
  (tmp_path / 'train.jsonl').write_text('{"text": "a", "label": "x"}\n')
  plan = plan_lib.make_plan(c, num_devices=8)
  assert set(plan.setup.batch_shapes()) == {'inputs', 'positions', 'segment_ids', 'lengths',
                                            'labels'}
  plan.xla = plan_lib.compile_memory(plan)
  assert plan.xla['argument'] > plan.per_device('parameters')
