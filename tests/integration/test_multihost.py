"""Multi-process runs for real: local processes joined over gloo, 4 fake CPU devices each.

- Hybrid meshes: with mesh.dcn_* > 1 a DCN axis crosses the processes and the ICI axes
  stay inside one; each process's rows land on its own devices.
- Two processes train together via `python -m lm.main`, checkpoint, resume, and log the
  losses of the single-process 8-device run.
- A checkpoint saved with fsdp=8 restores onto data=2 x tensor=2 on 4 devices and the run
  goes on with the losses of the uninterrupted one.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from train_fixtures import subprocess_xla_flags

from configs.default import get_config
from lm.data import prepare
from lm.train import Trainer
from lm.train.metrics import read_metrics

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
STEPS = 20
SENTENCES = ['the quick brown fox jumps over the lazy dog.', 'a stitch in time saves nine.',
             'all that glitters is not gold.', 'to be or not to be, that is the question.']

# Config overrides shared by the in-process reference and the `python -m lm.main` runs.
# A constant learning rate: a run stopped at step 10 by train.steps=10 then resumed with
# train.steps=20 sees the same rates as the uninterrupted one.
OVERRIDES = {
    'data.source': 'text', 'data.val_fraction': 0.2, 'data.seq_len': 32,
    'data.tokenizer.kind': 'byte',
    'model.num_layers': 2, 'model.width': 32, 'model.mlp_dim': 64, 'model.num_heads': 2,
    'model.num_kv_heads': 2, 'model.unroll_layers': False,
    'optimizer.lr': 1e-2, 'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0,
    'train.steps': STEPS, 'train.batch_size': 8, 'train.steps_per_dispatch': 5,
    'train.log_every': 5, 'train.eval_every': 10, 'train.eval_batches': 2,
    'train.sample_tokens': 0, 'train.sample_prompt_tokens': 4, 'checkpoint.every': 10,
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, compile_cache: pathlib.Path | None) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env.update(XLA_FLAGS=subprocess_xla_flags(devices), JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  if compile_cache is not None:  # a resumed run reuses the first run's compiled steps
    env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  return env


def _run_all(commands: list[list[str]], devices: int, timeout: int = 300,
             compile_cache: pathlib.Path | None = None) -> list[str]:
  """Runs the commands at once (the processes of one run); returns their outputs."""
  env = _env(devices, compile_cache)
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for cmd in commands]
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-4000:]
  return outs


# ---- hybrid meshes ------------------------------------------------------------------------

_MESH_WORKER = """
import json, sys
import numpy as np
pid, port = int(sys.argv[1]), sys.argv[2]
from lm.parallel import distributed
how = distributed.initialize(f'127.0.0.1:{port}', 2, pid)
import jax
from configs.default import get_config
from lm import parallel
from lm.config import ConfigError
out = {'how': how, 'processes': jax.process_count(), 'devices': jax.device_count()}
for name, sizes in {'dcn_data': dict(data=2, fsdp=2, dcn_data=2),
                    'dcn_fsdp': dict(data=2, fsdp=2, dcn_fsdp=2),
                    'plain': dict(data=2, fsdp=4)}.items():
  m = get_config().mesh
  m.update(sizes)
  mesh = parallel.build_mesh(m)
  # 4 local rows marked with this process's id, assembled into one global [8, 2] batch.
  rows = {'x': np.full((4, 2), pid, np.int32)}
  x = parallel.global_batch(rows, parallel.batch_sharding(mesh))['x']
  out[name] = {
      'shape': dict(mesh.shape),
      'process_DF': np.vectorize(lambda d: d.process_index)(mesh.devices[:, :, 0, 0, 0]).tolist(),
      'own_rows': all((np.asarray(s.data) == pid).all() for s in x.addressable_shards),
      'global_sum': int(jax.jit(lambda a: a.sum())(x)),
  }
m = get_config().mesh
m.update(dict(data=2, dcn_data=4))
try:
  parallel.build_mesh(m)
except ConfigError as e:
  out['error'] = str(e)
print('RESULT ' + json.dumps(out), flush=True)
"""


def test_hybrid_mesh_puts_dcn_axes_across_processes(tmp_path):
  script = tmp_path / 'mesh_worker.py'
  script.write_text(_MESH_WORKER)
  port = _free_port()
  outs = _run_all([[sys.executable, str(script), str(i), str(port)] for i in range(2)],
                  devices=4, timeout=120)
  for out in outs:
    result = json.loads(out.split('RESULT ', 1)[1].splitlines()[0])
    assert (result['how'], result['processes'], result['devices']) == ('explicit', 2, 8)
    dcn_data, dcn_fsdp, plain = result['dcn_data'], result['dcn_fsdp'], result['plain']
    assert dcn_data['shape'] == {'data': 4, 'fsdp': 2, 'sequence': 1, 'expert': 1, 'tensor': 1}
    assert dcn_data['process_DF'] == [[0, 0], [0, 0], [1, 1], [1, 1]]  # data crosses them
    assert dcn_fsdp['shape'] == {'data': 2, 'fsdp': 4, 'sequence': 1, 'expert': 1, 'tensor': 1}
    assert dcn_fsdp['process_DF'] == [[0, 0, 1, 1], [0, 0, 1, 1]]  # fsdp crosses them
    assert plain['process_DF'] != dcn_fsdp['process_DF']  # without DCN sizes: another layout
    for layout in (dcn_data, dcn_fsdp, plain):
      assert layout['own_rows']  # a process's rows land on its own devices
      assert layout['global_sum'] == 8  # process 1's 4 x 2 ones, each row once
    assert 'mesh.dcn_data=4' in result['error'] and 'devices form 2' in result['error']


# ---- training across processes, resuming onto other meshes ---------------------------------


def _write_corpus(root: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  for i in range(16):
    picks = rng.choice(len(SENTENCES), size=12)
    (root / f'doc{i:02d}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  return root


@pytest.fixture(scope='module')
def overrides(tmp_path_factory) -> dict:
  """OVERRIDES with a corpus, prepared once here so that the subprocesses find it cached."""
  corpus = _write_corpus(tmp_path_factory.mktemp('corpus'))
  out = dict(OVERRIDES, **{'data.path': str(corpus),
                           'data.cache_dir': str(tmp_path_factory.mktemp('cache'))})
  prepare(_config(out).data, seq_len=out['data.seq_len'], log=lambda _: None)
  return out


def _config(overrides: dict, **more):
  c = get_config()
  for key, value in {**overrides, **more}.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _main(workdir, overrides: dict, **more) -> list[str]:
  return [sys.executable, '-m', 'lm.main', '--config=configs/default.py', f'--workdir={workdir}',
          *(f'--config.{k}={v}' for k, v in {**overrides, **more}.items())]


@pytest.fixture(scope='module')
def reference(overrides, tmp_path_factory) -> pathlib.Path:
  """The uninterrupted single-process run on 8 devices, saved with fsdp=8 (steps 10, 20)."""
  workdir = tmp_path_factory.mktemp('reference')
  Trainer(_config(overrides, **{'mesh.data': 1, 'mesh.fsdp': 8}), str(workdir),
          log=lambda _: None).run()
  return workdir


def _assert_same_rows(workdir: pathlib.Path, reference: pathlib.Path) -> None:
  rows, ref = read_metrics(workdir / 'metrics.jsonl'), read_metrics(reference / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [r['step'] for r in ref] == [5, 10, 15, 20]
  for key in ('train/loss', 'eval/loss'):
    np.testing.assert_allclose([r.get(key, 0.0) for r in rows], [r.get(key, 0.0) for r in ref],
                               rtol=1e-5, err_msg=key)
  assert ref[-1]['train/loss'] < 0.7 * ref[0]['train/loss']  # it trained


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_like_one(overrides, reference, tmp_path):
  workdir = tmp_path / 'run'
  # A hybrid mesh: data crosses the two processes (dcn), fsdp=2 and data=2 inside each.
  mesh = {'mesh.data': -1, 'mesh.fsdp': 2, 'mesh.dcn_data': 2}
  for steps in (10, STEPS):  # stop at the checkpoint of step 10, then resume to the end
    port = _free_port()
    sample = {'train.sample_tokens': 8 if steps == STEPS else 0}  # sampling works sharded too
    _run_all([_main(workdir, overrides, **mesh, **sample, **{'train.steps': steps}) + [
        f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}']
        for i in range(2)], devices=4, compile_cache=tmp_path / 'xla_cache')
  assert sorted(p.name for p in (workdir / 'checkpoints' / '20' / 'data_state').glob('*.json')
                ) == ['process_0-of-2.json', 'process_1-of-2.json']
  config = json.loads((workdir / 'config.json').read_text())['mesh']
  assert (config['data'], config['fsdp'], config['dcn_data']) == (2, 2, 2)
  _assert_same_rows(workdir, reference)
  assert (workdir / 'sample.txt').read_text()


@pytest.mark.slow
def test_restore_onto_another_mesh_and_device_count_continues_the_run(
    overrides, reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '20')  # as if stopped after the save at step 10
  out, = _run_all([_main(workdir, overrides, **{'mesh.data': 2, 'mesh.fsdp': 1,
                                                 'mesh.tensor': 2})], devices=4)
  assert 'resumed from' in out and '(step 10)' in out, out[-3000:]
  assert "'data': 2, 'fsdp': 1, 'sequence': 1, 'expert': 1, 'tensor': 2" in out
  _assert_same_rows(workdir, reference)


# ---- joining a run: flags and environment -------------------------------------------------


def test_initialize_reads_flags_then_slurm_then_tpu_and_names_bad_flags():
  from lm.parallel import distributed
  assert distributed.detect({'SLURM_NTASKS': '4', 'SLURM_PROCID': '1'}) == 'slurm'
  assert distributed.detect({'SLURM_NTASKS': '1', 'SLURM_PROCID': '0'}) is None
  assert distributed.detect({'TPU_WORKER_HOSTNAMES': 'h0,h1'}) == 'tpu'
  assert distributed.detect({'TPU_WORKER_HOSTNAMES': 'h0'}) is None  # one host: no init
  assert distributed.initialize(environ={}) == 'single'
  assert distributed.initialize('127.0.0.1:1234', 1, 0, environ={}) == 'single'
  for args, words in [((None, 2, 0), ['--coordinator_address']),
                      (('127.0.0.1:1234', None, None), ['--num_processes', '--process_id']),
                      (('localhost', 2, 0), ['HOST:PORT']),
                      (('127.0.0.1:1234', 2, 2), ['--process_id=2', '--num_processes=2'])]:
    with pytest.raises(distributed.DistributedError) as e:
      distributed.initialize(*args, environ={})
    assert all(w in str(e.value) for w in words), (args, str(e.value))
