"""lm.checkpoint: sharded round trips, retention, async saves and damaged directories."""

import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lm import config as config_lib
from lm.checkpoint import Checkpointer, CheckpointError, handlers

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
CONFIG_JSON = config_lib.to_json(config_lib.default_config())


def _mesh(shape, names, n=None):
  devices = np.array(jax.devices()[:n or int(np.prod(shape))]).reshape(shape)
  return Mesh(devices, names)


def _state(step: int, mesh: Mesh) -> dict:
  """A train-state-like pytree: (64, 64) is big enough that OCDBT stores it in data files."""
  key = jax.random.key(step)
  w = jax.random.normal(key, (64, 64), jnp.float32)

  def put(x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))

  return {
      'params': {'w': put(w, P('data')), 'b': put(jnp.arange(8.0) + step, P())},
      'opt_state': {'mu': {'w': put(w * 0.5, P('data')), 'b': put(jnp.zeros(8), P())},
                    'count': put(jnp.int32(step), P())},
      'step': put(jnp.int32(step), P()),
      'rng': put(jax.random.key_data(key), P()),
  }


def _abstract(state: dict, sharding_for) -> dict:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_for(x)), state)


def _assert_same(a: dict, b: dict) -> None:
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b, strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _step_dirs(directory: Path) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.fixture
def mesh8():
  return _mesh((8,), ('data',))


def test_round_trip_onto_other_meshes(tmp_path, mesh8):
  state = _state(7, mesh8)
  data_state = {'epoch': 1, 'position': [3, 4], 'name': 'stdlib'}
  with Checkpointer(tmp_path / 'ckpt', async_save=False) as ck:
    ck.save(7, state, data_state=data_state, config_json=CONFIG_JSON)
    assert ck.latest_step() == 7

  mesh24 = _mesh((2, 4), ('a', 'b'))
  mesh4 = _mesh((4,), ('x',), n=4)
  layouts = {
      '2x4': lambda x: NamedSharding(mesh24, P('a', 'b') if x.ndim == 2 else P()),
      '4 devices': lambda x: NamedSharding(mesh4, P(None, 'x') if x.ndim == 2 else P()),
  }
  for name, sharding_for in layouts.items():
    with Checkpointer(tmp_path / 'ckpt') as ck:  # a fresh process would do exactly this
      abstract = _abstract(state, sharding_for)
      restored, restored_data, restored_config = ck.restore(abstract)
    _assert_same(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
      assert got.sharding == want.sharding, name
    assert restored_data == data_state
    assert restored_config == CONFIG_JSON
    assert config_lib.from_json(restored_config) == config_lib.default_config()


def test_keeps_last_k_and_best_by_eval_loss(tmp_path, mesh8):
  directory = tmp_path / 'ckpt'
  losses = {1: 3.0, 2: 1.0, 3: None, 4: 2.0, 5: None}
  with Checkpointer(directory, keep=2, async_save=False) as ck:
    for step, loss in losses.items():
      ck.save(step, _state(step, mesh8), data_state={}, config_json='{}', eval_loss=loss)
    # last two (4, 5) + the best (2); a checkpoint without an eval loss is never the best.
    assert ck.all_steps() == [2, 4, 5]
    assert ck.best_step() == 2
  assert _step_dirs(directory) == [2, 4, 5]

  # The eval losses are read back from disk: a resumed run still keeps step 2.
  with Checkpointer(directory, keep=2, async_save=False) as ck:
    ck.save(6, _state(6, mesh8), data_state={}, config_json='{}', eval_loss=1.5)
    assert ck.all_steps() == [2, 5, 6]
    ck.save(7, _state(7, mesh8), data_state={}, config_json='{}', eval_loss=0.5)
    assert ck.all_steps() == [6, 7]
  assert _step_dirs(directory) == [6, 7]


def test_no_eval_loss_keeps_only_the_last_k(tmp_path, mesh8):
  with Checkpointer(tmp_path, keep=1, async_save=False) as ck:
    for step in (1, 2, 3):
      ck.save(step, _state(step, mesh8), data_state={}, config_json='{}')
    assert ck.all_steps() == [3]
    assert ck.best_step() is None


def test_async_save_writes_in_the_background(tmp_path, mesh8, monkeypatch):
  release = threading.Event()
  write = handlers.DataStateHandler._write

  def blocked_write(directory, text):
    release.wait(timeout=10)  # holds the background commit until the test lets it go
    write(directory, text)

  monkeypatch.setattr(handlers.DataStateHandler, '_write', staticmethod(blocked_write))
  state = _state(3, mesh8)
  saved = jax.tree.map(np.asarray, state)
  abstract = _abstract(state, lambda x: x.sharding)
  data_state = {'position': 3}
  with Checkpointer(tmp_path, async_save=True) as ck:
    ck.save(3, state, data_state=data_state, config_json=CONFIG_JSON)
    # save() returned while its write is still blocked: training goes on meanwhile,
    # donating (freeing) the state's buffers and advancing the data iterator.
    assert not release.is_set()
    assert not (tmp_path / '3').exists()
    train_step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    state = train_step(state)
    assert not (tmp_path / '3').exists()
    data_state['position'] = 999
    release.set()
    ck.wait()
    assert (tmp_path / '3').is_dir()
    restored, restored_data, _ = ck.restore(abstract)
  _assert_same(restored, saved)
  assert restored_data == {'position': 3}


def test_crash_mid_save_leaves_previous_checkpoint_intact(tmp_path):
  script = textwrap.dedent(f"""
      import os, sys, threading, time
      sys.path.insert(0, {str(REPO)!r})
      import jax.numpy as jnp
      from lm import checkpoint as C
      d = {str(tmp_path)!r}
      ck = C.Checkpointer(d, keep=2, async_save=True)
      ck.save(1, {{'w': jnp.full((512,), 1.0)}}, data_state={{'pos': 1}}, config_json='{{}}')
      ck.wait()
      C.handlers.DataStateHandler._write = staticmethod(lambda *a: threading.Event().wait())
      ck.save(2, {{'w': jnp.full((512,), 2.0)}}, data_state={{'pos': 2}}, config_json='{{}}')
      while not os.path.isdir(os.path.join(d, '2.orbax-checkpoint-tmp')):
        time.sleep(0.01)
      time.sleep(0.2)
      os._exit(3)  # killed mid-save: no cleanup, no finalize
  """)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert (tmp_path / '2.orbax-checkpoint-tmp').is_dir()  # the save really was cut off
  assert not (tmp_path / '2').exists()

  device = jax.devices()[0]
  abstract = {'w': jax.ShapeDtypeStruct((512,), jnp.float32,
                                        sharding=jax.sharding.SingleDeviceSharding(device))}
  with Checkpointer(tmp_path, read_only=True) as reader:  # e.g. an eval job: touches nothing
    assert reader.latest_step() == 1
    assert reader.restore(abstract)[1] == {'pos': 1}
    with pytest.raises(CheckpointError, match='read_only'):
      reader.save(3, {'w': jnp.zeros(512)}, data_state={}, config_json='{}')
  assert (tmp_path / '2.orbax-checkpoint-tmp').is_dir()

  with Checkpointer(tmp_path, keep=2, async_save=False) as ck:
    assert ck.latest_step() == 1
    state, data_state, _ = ck.restore(abstract)
    np.testing.assert_array_equal(np.asarray(state['w']), np.full((512,), 1.0))
    assert data_state == {'pos': 1}
    ck.save(2, {'w': jnp.full((512,), 2.0)}, data_state={'pos': 2}, config_json='{}')
    assert ck.restore(abstract)[1] == {'pos': 2}
  assert not (tmp_path / '2.orbax-checkpoint-tmp').exists()


def test_failed_background_save_is_reported_and_harmless(tmp_path, mesh8, monkeypatch):
  with Checkpointer(tmp_path, async_save=True) as ck:
    ck.save(1, _state(1, mesh8), data_state={'pos': 1}, config_json='{}')
    ck.wait()

    def disk_full(directory, text):
      raise OSError('No space left on device')

    monkeypatch.setattr(handlers.DataStateHandler, '_write', staticmethod(disk_full))
    ck.save(2, _state(2, mesh8), data_state={'pos': 2}, config_json='{}')
    with pytest.raises(CheckpointError, match='No space left on device'):
      ck.wait()
    assert ck.all_steps() == [1]
    monkeypatch.undo()
    restored, data_state, _ = ck.restore(_abstract(_state(1, mesh8), lambda x: x.sharding))
  _assert_same(restored, _state(1, mesh8))
  assert data_state == {'pos': 1}


def _truncate(path: Path) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _data_files(step_dir: Path) -> list[Path]:
  files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files, 'expected OCDBT data files under state/'
  return files


CORRUPTIONS = {
    'array data truncated': lambda d: [_truncate(p) for p in _data_files(d)],
    'array data deleted': lambda d: [p.unlink() for p in _data_files(d)],
    'ocdbt manifest truncated': lambda d: _truncate(d / 'state' / 'manifest.ocdbt'),
    'state metadata deleted': lambda d: (d / 'state' / '_METADATA').unlink(),
    'data state deleted': lambda d: (d / 'data_state' / 'process_0-of-1.json').unlink(),
    'config truncated': lambda d: _truncate(d / 'config' / 'config.json'),
    'checkpoint metadata deleted': lambda d: (d / '_CHECKPOINT_METADATA').unlink(),
}


@pytest.mark.parametrize('corrupt', list(CORRUPTIONS), ids=list(CORRUPTIONS))
# tensorstore may finish a failed read after orbax closed its event loop; that is noise.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_damaged_checkpoint_is_an_error_not_a_fallback(tmp_path, mesh8, corrupt):
  states = {s: _state(s, mesh8) for s in (1, 2, 3)}
  with Checkpointer(tmp_path, keep=3, async_save=False) as ck:
    for step, state in states.items():
      ck.save(step, state, data_state={'pos': step}, config_json=CONFIG_JSON)
  CORRUPTIONS[corrupt](tmp_path / '3')

  abstract = _abstract(states[1], lambda x: x.sharding)
  with Checkpointer(tmp_path, keep=3, async_save=False) as ck:
    assert ck.latest_step() == 3  # never quietly falls back to step 2
    with pytest.raises(CheckpointError) as e:
      ck.restore(abstract)
    assert str(tmp_path / '3') in str(e.value)
    assert 'Delete' in str(e.value)
    for step in (1, 2):  # the other checkpoints are intact
      restored, data_state, _ = ck.restore(abstract, step=step)
      _assert_same(restored, states[step])
      assert data_state == {'pos': step}


def test_foreign_directory_is_refused(tmp_path, mesh8):
  (tmp_path / 'notes.txt').write_text('my notes')
  (tmp_path / 'runs').mkdir()
  with pytest.raises(CheckpointError, match='notes.txt') as e:
    Checkpointer(tmp_path)
  assert str(tmp_path) in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt', 'runs']  # left alone

  a_file = tmp_path / 'notes.txt'
  with pytest.raises(CheckpointError, match='is a file'):
    Checkpointer(a_file)


def test_step_directory_from_another_program_is_refused(tmp_path, mesh8):
  with Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(1, _state(1, mesh8), data_state={}, config_json='{}')
  (tmp_path / '5').mkdir()
  (tmp_path / '5' / 'weights.bin').write_bytes(b'\0' * 16)
  with Checkpointer(tmp_path, async_save=False) as ck:
    assert ck.latest_step() == 5
    with pytest.raises(CheckpointError, match='not an lm checkpoint') as e:
      ck.restore(_abstract(_state(1, mesh8), lambda x: x.sharding))
    assert str(tmp_path / '5') in str(e.value)


def test_structure_mismatch_names_the_key_and_shapes(tmp_path, mesh8):
  state = _state(1, mesh8)
  with Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(1, state, data_state={}, config_json='{}')
    abstract = _abstract(state, lambda x: x.sharding)

    wrong_shape = jax.tree.map(lambda x: x, abstract)
    wrong_shape['opt_state']['mu']['w'] = jax.ShapeDtypeStruct(
        (64, 32), jnp.float32, sharding=abstract['opt_state']['mu']['w'].sharding)
    with pytest.raises(CheckpointError) as e:
      ck.restore(wrong_shape)
    assert 'opt_state.mu.w' in str(e.value)
    assert '(64, 32)' in str(e.value) and '(64, 64)' in str(e.value)

    extra = dict(abstract, ema=abstract['params']['b'])
    with pytest.raises(CheckpointError, match="'ema'"):
      ck.restore(extra)

    missing = dict(abstract)
    del missing['rng']
    with pytest.raises(CheckpointError, match="'rng'"):
      ck.restore(missing)

    no_sharding = dict(abstract, step=jax.ShapeDtypeStruct((), jnp.int32))
    with pytest.raises(CheckpointError, match="'step'.*no sharding"):
      ck.restore(no_sharding)


def test_save_rules(tmp_path, mesh8):
  with pytest.raises(CheckpointError, match='keep'):
    Checkpointer(tmp_path, keep=0)
  with Checkpointer(tmp_path, async_save=False) as ck:
    abstract = _abstract(_state(1, mesh8), lambda x: x.sharding)
    ck.save(5, _state(5, mesh8), data_state={'v': 1}, config_json='{}')
    ck.save(5, _state(6, mesh8), data_state={'v': 2}, config_json='{}')  # already saved: skipped
    assert ck.restore(abstract)[1] == {'v': 1}
    ck.save(5, _state(6, mesh8), data_state={'v': 3}, config_json='{}', force=True)  # replaced
    restored, data_state, _ = ck.restore(abstract)
    assert data_state == {'v': 3}
    _assert_same(restored, _state(6, mesh8))
    with pytest.raises(CheckpointError, match='newer step 5'):
      ck.save(4, _state(4, mesh8), data_state={}, config_json='{}')
    with pytest.raises(CheckpointError, match='config_json'):
      ck.save(6, _state(6, mesh8), data_state={}, config_json='not json')
    with pytest.raises(CheckpointError, match='data_state'):
      ck.save(6, _state(6, mesh8), data_state={'x': object()}, config_json='{}')
    assert ck.all_steps() == [5]
    with pytest.raises(CheckpointError, match='no checkpoint for step 9'):
      ck.restore(abstract, step=9)


_WORKER = """
import os, sys
pid, port, directory, repo = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, repo)
import jax, numpy as np, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=pid)
from lm.checkpoint import Checkpointer
full = np.arange(32, dtype=np.float32).reshape(8, 4)
mesh = Mesh(np.array(jax.devices()).reshape(4), ('data',))
w = jax.make_array_from_callback(full.shape, NamedSharding(mesh, P('data')), lambda i: full[i])
ck = Checkpointer(directory, keep=2)
ck.save(1, {'w': w}, data_state={'proc': pid}, config_json='{"a": 1}')
ck.wait()
mesh2 = Mesh(np.array(jax.devices()).reshape(2, 2), ('a', 'b'))
abstract = {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32,
                                      sharding=NamedSharding(mesh2, P('b', 'a')))}
state, data_state, _ = ck.restore(abstract)
ok = all(np.array_equal(np.asarray(s.data), full[s.index]) for s in state['w'].addressable_shards)
ck.close()
print('RESULT', ok, data_state['proc'], flush=True)
"""


def test_two_processes_save_and_restore(tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  script = tmp_path / 'worker.py'
  script.write_text(_WORKER)
  directory = tmp_path / 'ckpt'
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(directory),
                             str(REPO)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, out[-3000:]
    assert f'RESULT True {i}' in out, out[-3000:]  # its own data state, values on the new mesh
  files = sorted(p.name for p in (directory / '1' / 'data_state').glob('*.json'))
  assert files == ['process_0-of-2.json', 'process_1-of-2.json']

  # One process cannot take over two different data-iterator states.
  with Checkpointer(directory) as ck:
    abstract = {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32,
                                          sharding=NamedSharding(_mesh((8,), ('x',)), P('x')))}
    with pytest.raises(CheckpointError, match='saved by 2 processes'):
      ck.restore(abstract)


@pytest.mark.parametrize('damaged_file', ['metrics/metrics', '_CHECKPOINT_METADATA'])
def test_damaged_step_metadata_sets_only_that_step_aside(tmp_path, mesh8, damaged_file):
  # Orbax parses these small files when it opens the directory: one torn file used to make
  # every step unopenable. Now that step is named, left on disk, and the others open.
  states = {s: _state(s, mesh8) for s in (1, 2, 3)}
  with Checkpointer(tmp_path, keep=3, async_save=False) as ck:
    for step, state in states.items():
      ck.save(step, state, data_state={'pos': step}, config_json=CONFIG_JSON,
              eval_loss=1.0 / step)
  victim = tmp_path / '3' / damaged_file
  _truncate(victim)
  torn = victim.read_bytes()

  abstract = _abstract(states[1], lambda x: x.sharding)
  for read_only in (True, False):
    with Checkpointer(tmp_path, keep=3, async_save=False, read_only=read_only) as ck:
      assert ck.all_steps() == [1, 2] and ck.latest_step() == 2
      assert list(ck.damaged) == [3] and str(victim) in ck.damaged[3]
      restored, data_state, _ = ck.restore(abstract)  # the previous good step
      _assert_same(restored, states[2])
      assert data_state == {'pos': 2}
      if not read_only:
        with pytest.raises(CheckpointError, match=r'cannot save step 3: .*damaged.*Delete it'):
          ck.save(3, states[3], data_state={}, config_json=CONFIG_JSON)
        ck.save(4, states[3], data_state={'pos': 4}, config_json=CONFIG_JSON)
  assert victim.read_bytes() == torn and (tmp_path / '3' / 'state').is_dir()  # left alone
  assert _step_dirs(tmp_path) == [1, 2, 3, 4]
