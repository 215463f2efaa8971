"""lm.train: the loss falls, sharding and grad accumulation change nothing, resumes are exact.

Every run is a tiny model (2 layers, width 32) on a small repetitive text corpus that is
prepared once per module. The Trainer tests share one uninterrupted reference run and
compare interrupted and diverged-then-resumed runs of the same config against it; the
sharding and accumulation tests call the train step's building blocks directly (the
Trainer always uses every device). A module-wide persistent XLA cache makes the repeated
Trainer runs of one config compile once.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import socket

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from train_fixtures import module_xla_cache  # noqa: F401  (an autouse fixture: one XLA cache per module)

from configs.default import get_config
from lm import config as config_lib
from lm import parallel
from lm import workdir as workdir_lib
from lm.checkpoint import Checkpointer, CheckpointError
from lm.data import prepare
from lm.errors import DataError
from lm.model import ModelConfig, ModelDef
from lm.run import load_run, write_run
from lm.train import Trainer, TrainingDiverged
from lm.train import metrics as metrics_lib
from lm.train.metrics import read_metrics
from lm.train.optimizer import build_optimizer
from lm.train.state import abstract_state, fresh_state, init_state, state_shardings
from lm.train.step import make_train_step

SEQ_LEN = 32
STEPS = 40  # the reference run: logs every 5 steps, evaluates and checkpoints every 20
SENTENCES = [
    'the quick brown fox jumps over the lazy dog.',
    'a stitch in time saves nine.',
    'all that glitters is not gold.',
    'to be or not to be, that is the question.',
    'the early bird catches the worm.',
]


def _write_corpus(root: pathlib.Path) -> pathlib.Path:
  """24 documents of the same few sentences in varying order: easy to learn quickly."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  for i in range(24):
    picks = rng.choice(len(SENTENCES), size=14)
    (root / f'doc{i:02d}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  return root


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  corpus = _write_corpus(tmp_path_factory.mktemp('corpus'))
  return corpus, tmp_path_factory.mktemp('data_cache')


def _config(data_dirs) -> ml_collections.ConfigDict:
  """The tiny reference config every Trainer test runs."""
  corpus, cache = data_dirs
  c = get_config()
  c.data.source, c.data.path, c.data.cache_dir = 'text', str(corpus), str(cache)
  c.data.val_fraction = 0.2
  c.data.seq_len = SEQ_LEN
  c.data.tokenizer.kind = 'byte'
  c.model.num_layers, c.model.width, c.model.mlp_dim = 2, 32, 64
  c.model.num_heads = c.model.num_kv_heads = 2
  c.model.dropout = 0.1  # so that resuming must restore the step the dropout keys derive from
  c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.min_lr = 1e-2, 5, 1e-3
  c.train.steps = STEPS
  c.train.batch_size = 8
  c.train.steps_per_dispatch = c.train.log_every = 5
  c.train.eval_every = c.checkpoint.every = 20
  c.train.eval_batches = 2
  c.train.sample_tokens, c.train.sample_prompt_tokens = 16, 8
  return c


class _HookedIterator:
  """Wraps the training iterator; `hook(n, batch)` sees the n-th batch (from 1) first."""

  def __init__(self, inner, hook):
    self.inner, self.hook, self.count = inner, hook, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.inner)
    self.count += 1
    return self.hook(self.count, batch)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def _hook_data(trainer: Trainer, hook) -> None:
  make = trainer.data.train_iterator
  trainer.data.train_iterator = lambda **kw: _HookedIterator(make(**kw), hook)


def _trainer(config, workdir, logs: list[str] | None = None) -> Trainer:
  return Trainer(config, str(workdir), log=(logs.append if logs is not None else lambda _: None))


def _restore(trainer: Trainer, step: int | None = None) -> tuple[dict, dict, str]:
  """(state as numpy, data state, config JSON) of a checkpoint in the trainer's workdir."""
  target = abstract_state(trainer.model_def, trainer.optimizer, trainer.config.seed,
                          trainer.shardings)
  with Checkpointer(os.path.join(trainer.workdir, 'checkpoints'), read_only=True) as ckpt:
    state, data_state, config_json = ckpt.restore(target, step)
  return jax.device_get(state), data_state, config_json


def _checkpoint_steps(workdir) -> list[int]:
  with Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True) as ckpt:
    return ckpt.all_steps()


def _assert_trees_close_in_norm(a, b, rel: float) -> None:
  """|a - b| <= rel * |b| per leaf (L2 norms): tolerant of a few near-zero entries."""
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for (path, x), y in zip(flat_a, flat_b, strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= rel * np.linalg.norm(y), jax.tree_util.keystr(path)


def _assert_trees_equal(a, b, rtol=1e-6, atol=0.0) -> None:
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for (path, x), y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def reference(data_dirs, tmp_path_factory):
  """One uninterrupted run of the reference config."""
  workdir = tmp_path_factory.mktemp('reference')
  trainer = _trainer(_config(data_dirs), workdir)
  final = trainer.run()
  rows = read_metrics(workdir / 'metrics.jsonl')
  state, _, _ = _restore(trainer)
  return {'workdir': workdir, 'trainer': trainer, 'final': final, 'rows': rows, 'state': state}


# ---- a run end to end -----------------------------------------------------------------------


def _eval_loss_by_hand(trainer: Trainer, params) -> tuple[float, float]:
  """Validation loss (nats/token) and bits/byte computed directly from the model's logits."""
  cfg = trainer.config
  model = trainer.model_def.merge(params)
  byte_len = np.asarray(trainer.tokenizer.byte_lengths(), np.float64)
  nll_sum = tokens = nbytes = 0.0
  for b in trainer.data.eval_batches(batch_size=cfg.train.batch_size,
                                     num_batches=cfg.train.eval_batches):
    logits = np.asarray(model(b['inputs'], b['positions'], b['segment_ids']), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b['targets'][..., None], -1)[..., 0]
    nll_sum += float((nll * b['weights']).sum())
    tokens += float(b['weights'].sum())
    nbytes += float((byte_len[b['targets']] * b['weights']).sum())
  return nll_sum / tokens, nll_sum / nbytes / math.log(2)


def test_loss_falls_and_the_run_writes_its_files(reference):
  rows, workdir, trainer = reference['rows'], reference['workdir'], reference['trainer']
  assert [r['step'] for r in rows] == list(range(5, STEPS + 1, 5))
  for r in rows:
    assert math.isfinite(r['train/loss']) and math.isfinite(r['train/grad_norm'])
    assert ('eval/loss' in r) == (r['step'] % 20 == 0), r
  assert all(r['train/tokens_per_sec'] > 0 for r in rows)  # the first includes compilation
  first, last = rows[0]['train/loss'], rows[-1]['train/loss']
  assert first > 0.7 * math.log(trainer.model_def.cfg.vocab_size)  # starts near uniform
  assert last < 0.6 * first, (first, last)
  evals = [r['eval/loss'] for r in rows if 'eval/loss' in r]
  assert all(math.isfinite(e) for e in evals) and evals[-1] < evals[0]

  # The logged eval loss is the token-weighted mean over the validation batches.
  loss, bits_per_byte = _eval_loss_by_hand(trainer, reference['state']['params'])
  assert rows[-1]['eval/loss'] == pytest.approx(loss, rel=1e-4)
  assert rows[-1]['eval/bits_per_byte'] == pytest.approx(bits_per_byte, rel=1e-4)
  assert rows[-1]['eval/perplexity'] == pytest.approx(math.exp(loss), rel=1e-4)

  # config.json: the resolved config, with the tokenizer's vocabulary and the mesh filled in.
  saved = config_lib.from_json((workdir / 'config.json').read_text())
  assert saved.model.vocab_size == trainer.tokenizer.vocab_size == 259  # bytes + 3 specials
  assert saved.model.max_len == SEQ_LEN
  assert (saved.mesh.data, saved.mesh.fsdp, saved.mesh.tensor) == (8, 1, 1)
  assert saved.to_dict() == trainer.config.to_dict()

  # Checkpoints at every checkpoint.every steps and the end, each with that config.
  assert _checkpoint_steps(workdir) == [20, 40]
  state, data_state, config_json = _restore(trainer, 40)
  assert int(state['step']) == 40
  assert json.loads(config_json) == json.loads((workdir / 'config.json').read_text())
  assert data_state['pipeline']['batch_size'] == 8

  # The sample continues a prompt taken from the validation text.
  sample = (workdir / 'sample.txt').read_text()
  prompt_ids = trainer.tokenizer.encode(trainer.data.val_text_sample(200))[:8]
  prompt = trainer.tokenizer.decode(prompt_ids)
  assert len(prompt) == 8 and sample.startswith(prompt) and len(sample) > len(prompt)
  assert reference['final']['sample'] == sample
  assert (workdir / 'tb').is_dir()


# ---- sharding and gradient accumulation: the same numbers ----------------------------------


@pytest.fixture(scope='module')
def batches_KBT(data_dirs) -> dict[str, np.ndarray]:
  """3 consecutive training batches of 8 rows, stacked: [3, 8, SEQ_LEN]."""
  cfg = _config(data_dirs)
  data = prepare(cfg.data, seq_len=SEQ_LEN, log=lambda _: None)
  it = data.train_iterator(batch_size=8, seed=0)
  batches = [next(it) for _ in range(3)]
  assert min(b['weights'].min() for b in batches) == 0  # document boundaries are in there
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _mesh(data: int, fsdp: int, tensor: int):
  m = get_config().mesh
  m.data, m.fsdp, m.tensor = data, fsdp, tensor
  return parallel.build_mesh(m, devices=jax.devices()[:data * fsdp * tensor])


def _model_cfg(**overrides) -> ModelConfig:
  c = get_config().model
  c.num_layers, c.width, c.mlp_dim, c.num_heads, c.num_kv_heads = 2, 32, 64, 4, 2
  c.unroll_layers = False  # the rolled layer scan compiles faster
  c.update(overrides)
  return ModelConfig.from_config(c, vocab_size=264, seq_len=SEQ_LEN)  # 264 % 8 == 0


def _optimizer():
  opt_cfg = get_config().optimizer
  opt_cfg.warmup_steps = 1
  return build_optimizer(opt_cfg, total_steps=10)


@functools.cache
def _fresh_state(model_cfg: ModelConfig) -> dict:
  """The step-0 state on the host, compiled once per model (dropout does not change it)."""
  model_def, (optimizer, _) = ModelDef.create(model_cfg), _optimizer()
  return jax.device_get(jax.jit(lambda: fresh_state(model_def, optimizer, 0))())


def _train_steps(model_cfg: ModelConfig, mesh, batches_KBT, *, grad_accum: int = 1):
  """One dispatch of len(batches) steps from the fresh state; returns the state and metrics."""
  rules = parallel.rules_for(get_config().mesh)
  model_def = ModelDef.create(model_cfg)
  optimizer, schedule = _optimizer()
  shardings = state_shardings(model_def, optimizer, mesh, rules)
  state = jax.device_put(_fresh_state(dataclasses.replace(model_cfg, dropout=0.0)), shardings)
  batch_sharding = parallel.batch_sharding(mesh, leading_dims=1)
  step_fn = make_train_step(model_def, optimizer, schedule, grad_accum=grad_accum, mesh=mesh,
                            rules=rules, shardings=shardings, batch_sharding=batch_sharding)
  state, metrics = step_fn(state, parallel.global_batch(batches_KBT, batch_sharding,
                                                        batch_axis=1))
  return model_def, optimizer, jax.device_get(state), jax.device_get(metrics)


def test_sharded_steps_equal_single_device_steps(batches_KBT):
  model_cfg = _model_cfg(dropout=0.1)  # dropout masks must not depend on the sharding either
  _, _, state_1, metrics_1 = _train_steps(model_cfg, _mesh(1, 1, 1), batches_KBT)
  _, _, state_8, metrics_8 = _train_steps(model_cfg, _mesh(2, 2, 2), batches_KBT)
  for key in ('train/loss', 'train/grad_norm', 'train/lr'):
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=1e-5, err_msg=key)
  # Parameters: Adam divides by sqrt(v) + 1e-8, so a gradient entry near 1e-8 turns float
  # reordering noise into a visible update difference; atol 1e-5 is 0.3% of lr.
  _assert_trees_equal(state_8['params'], state_1['params'], rtol=1e-5, atol=1e-5)
  # Adam moments: after three steps that noise is ~5e-6 of their norm; a real sharding
  # error (a reduction missing over a mesh axis) is off by O(1).
  _assert_trees_close_in_norm(state_8['opt_state'], state_1['opt_state'], rel=1e-4)
  assert int(state_8['step']) == int(state_1['step']) == 3
  params0 = _fresh_state(model_cfg)['params']
  assert not np.allclose(state_1['params']['embed'], params0['embed'])  # it did train


def test_fsdp_splits_the_large_parameters_and_their_optimizer_moments():
  model_def = ModelDef.create(_model_cfg())  # width 32: 4 embedding features per device
  optimizer, _ = _optimizer()
  mesh = _mesh(1, 8, 1)
  state = init_state(model_def, optimizer, 0, state_shardings(model_def, optimizer, mesh,
                                                              parallel.rules_for(get_config().mesh)))
  # Initialised in place, split, with the values a single device gets.
  # Equal to float32 rounding: jax 0.12 rounds a few sharded init values 1 ulp apart.
  _assert_trees_equal(jax.device_get(state), _fresh_state(_model_cfg()), rtol=1e-6)
  axes = model_def.logical_axes()
  is_axes = lambda x: isinstance(x, tuple)  # noqa: E731
  moments = [s for s in jax.tree.leaves(state['opt_state'], is_leaf=lambda x: hasattr(x, 'mu'))
             if hasattr(s, 'mu')]
  assert moments, 'no Adam state found'
  split = 0
  for tree in [state['params'], moments[0].mu, moments[0].nu]:
    for ax, x in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(tree), strict=True):
      per_device = [s.data.nbytes for s in x.addressable_shards]
      if 'embed' in ax:  # embedding, unembedding, attention and MLP kernels
        assert per_device == [x.nbytes // 8] * 8, (ax, x.shape, x.sharding)
        assert len({tuple((s.start, s.stop) for s in sh.index) for sh in x.addressable_shards}
                   ) == 8  # eight different pieces, not copies
        split += x.nbytes
      else:  # norm scales: small, replicated
        assert per_device == [x.nbytes] * 8, (ax, x.shape)
  params_bytes = sum(x.nbytes for x in jax.tree.leaves(state['params']))
  assert split > 0.95 * 3 * params_bytes  # nearly all of params + moments is split
  device0 = sum(s.data.nbytes for x in jax.tree.leaves(state['params'])
                for s in x.addressable_shards if s.device == jax.devices()[0])
  assert device0 < 0.15 * params_bytes


def test_grad_accumulation_equals_one_big_batch_and_a_plain_reference(batches_KBT):
  model_cfg = _model_cfg()  # dropout 0: each microbatch would draw other dropout masks
  mesh = _mesh(2, 1, 4)  # 8 rows / 4 microbatches = 2 rows, one per data shard
  model_def, optimizer, state_1, metrics_1 = _train_steps(model_cfg, mesh, batches_KBT,
                                                          grad_accum=1)
  _, _, state_4, metrics_4 = _train_steps(model_cfg, mesh, batches_KBT, grad_accum=4)
  for key in ('train/loss', 'train/grad_norm'):
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5, err_msg=key)
  _assert_trees_equal(state_4['params'], state_1['params'], rtol=1e-5, atol=1e-5)

  # A plain loop: mean token cross entropy by hand, jax.grad, the same optax chain.
  def loss_fn(params, batch):
    logits = model_def.merge(params)(batch['inputs'], batch['positions'], batch['segment_ids'])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
    return jnp.sum(nll * batch['weights']) / jnp.sum(batch['weights'])

  @jax.jit
  def reference_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

  params = _fresh_state(model_cfg)['params']
  opt_state = optimizer.init(params)
  for i in range(3):
    batch = {k: v[i] for k, v in batches_KBT.items()}
    params, opt_state, loss, grad_norm = reference_step(params, opt_state, batch)
    assert metrics_1['train/loss'][i] == pytest.approx(float(loss), rel=1e-5)
    assert metrics_4['train/loss'][i] == pytest.approx(float(loss), rel=1e-5)
    assert metrics_4['train/grad_norm'][i] == pytest.approx(float(grad_norm), rel=1e-5)
  _assert_trees_equal(state_4['params'], jax.device_get(params), rtol=1e-5, atol=1e-5)


# ---- resuming: exactly the run that was not interrupted ------------------------------------


def _assert_continues_reference(reference, workdir, trainer: Trainer) -> None:
  """Same metrics rows (train and eval losses to 1e-6) and the same final state."""
  rows, ref_rows = read_metrics(workdir / 'metrics.jsonl'), reference['rows']
  assert [r['step'] for r in rows] == [r['step'] for r in ref_rows]  # no step lost or doubled
  for key in ('train/loss', 'eval/loss'):
    np.testing.assert_allclose([r.get(key, 0.0) for r in rows],
                               [r.get(key, 0.0) for r in ref_rows], rtol=1e-6, err_msg=key)
  state, _, _ = _restore(trainer)
  assert int(state['step']) == STEPS
  _assert_trees_equal(state, reference['state'], rtol=1e-6)


@pytest.fixture(scope='module')
def diverged(data_dirs, tmp_path_factory):
  """The reference config with NaN loss weights at step 33: steps 21-30 run and are logged
  after the checkpoint at 20, then TrainingDiverged at the log step 35."""
  workdir = tmp_path_factory.mktemp('diverged')

  def poison(n, batch):
    if n == 33:
      batch = dict(batch, weights=np.full_like(batch['weights'], np.nan))
    return batch

  trainer = _trainer(_config(data_dirs), workdir)
  _hook_data(trainer, poison)
  with pytest.raises(TrainingDiverged) as err:
    trainer.run()
  return {'workdir': workdir, 'trainer': trainer, 'error': err.value}


def test_nan_loss_stops_with_training_diverged_and_keeps_the_last_checkpoint(
    reference, diverged):
  message, trainer = str(diverged['error']), diverged['trainer']
  assert 'step 33' in message, message
  assert str(trainer.checkpoints.directory) in message and '(20)' in message, message
  assert _checkpoint_steps(diverged['workdir']) == [20]  # nothing saved after the NaN
  assert max(r['step'] for r in read_metrics(diverged['workdir'] / 'metrics.jsonl')) == 30
  state, _, _ = _restore(trainer)
  assert int(state['step']) == 20
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  reference_20, _, _ = _restore(reference['trainer'], 20)
  _assert_trees_equal(state, reference_20, rtol=1e-6)


def test_resume_from_a_periodic_checkpoint_equals_the_uninterrupted_run(
    reference, diverged, data_dirs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(diverged['workdir'], workdir)  # checkpoint 20; metrics logged up to 30
  logs: list[str] = []
  trainer = _trainer(_config(data_dirs), workdir, logs)
  trainer.run()
  assert any('resumed from' in line and '(step 20)' in line for line in logs), logs
  # Restores params, optimizer moments, step (dropout keys) and the data position; the
  # metrics rows of the lost steps 21-30 are replaced, not duplicated.
  _assert_continues_reference(reference, workdir, trainer)


def test_keyboard_interrupt_saves_the_current_step_and_the_rerun_resumes(
    reference, data_dirs, tmp_path, capfd):
  config = _config(data_dirs)

  def interrupt(n, batch):
    if n == 13:  # steps 1-10 ran; the dispatch of 11-15 was being assembled
      raise KeyboardInterrupt
    return batch

  logs: list[str] = []
  trainer = _trainer(config, tmp_path, logs)
  _hook_data(trainer, interrupt)
  with pytest.raises(KeyboardInterrupt):
    trainer.run()
  assert _checkpoint_steps(tmp_path) == [10]  # not a checkpoint.every step: saved on interrupt
  assert 'interrupted: saving step 10' in capfd.readouterr().err  # printed above the bar
  state, _, _ = _restore(trainer, 10)
  assert int(state['step']) == 10

  logs.clear()
  trainer = _trainer(config, tmp_path, logs)
  trainer.run()
  assert any('resumed from' in line and '(step 10)' in line for line in logs), logs
  # The batches consumed for the unfinished dispatch are seen again after the resume.
  _assert_continues_reference(reference, tmp_path, trainer)


def test_truncated_checkpoint_is_reported_and_left_alone(reference, data_dirs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference['workdir'], workdir)
  step_dir = workdir / 'checkpoints' / '40'
  data_files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  victim = max(data_files, key=lambda p: p.stat().st_size)
  size = victim.stat().st_size
  with open(victim, 'r+b') as f:
    f.truncate(size // 2)

  trainer = _trainer(_config(data_dirs), workdir)
  try:
    with pytest.raises(CheckpointError) as err:
      trainer.run()
  finally:
    trainer.checkpoints.close()
  assert str(step_dir) in str(err.value), str(err.value)
  assert victim.stat().st_size == size // 2  # still there, not deleted or "repaired"
  assert _checkpoint_steps(workdir) == [20, 40]


def test_nan_then_ctrl_c_at_a_non_log_step_saves_nothing(reference, data_dirs, tmp_path):
  config = _config(data_dirs)
  config.train.log_every = 10  # the dispatch ending at step 25 is read back by no log row

  def poison_then_interrupt(n, batch):
    if n == 23:
      batch = dict(batch, weights=np.full_like(batch['weights'], np.nan))
    if n == 28:  # steps 21-25 ran (NaN at 23); the dispatch of 26-30 was being assembled
      raise KeyboardInterrupt
    return batch

  trainer = _trainer(config, tmp_path)
  _hook_data(trainer, poison_then_interrupt)
  with pytest.raises(TrainingDiverged, match=r'interrupted, and not saved: .* at step 23') as e:
    trainer.run()
  assert '(20)' in str(e.value)
  assert _checkpoint_steps(tmp_path) == [20]  # the NaN state of step 25 is not the latest
  state, _, _ = _restore(trainer)
  reference_20, _, _ = _restore(reference['trainer'], 20)
  _assert_trees_equal(state, reference_20, rtol=1e-6)


def test_truncated_checkpoint_metrics_set_that_step_aside(reference, data_dirs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference['workdir'], workdir)
  metrics = workdir / 'checkpoints' / '40' / 'metrics' / 'metrics'
  text = metrics.read_text()
  metrics.write_text(text[:len(text) // 2])

  logs: list[str] = []
  trainer = _trainer(_config(data_dirs), workdir, logs)
  try:
    state, _ = trainer._initial_state()
    with pytest.raises(CheckpointError, match='cannot save step 40: .*damaged'):
      trainer.checkpoints.save(40, state, data_state={}, config_json=trainer.config_json)
  finally:
    trainer.checkpoints.close()
  assert any('checkpoint step 40 is damaged' in line and 'metrics' in line for line in logs)
  assert any('resumed from' in line and '(step 20)' in line for line in logs), logs
  reference_20, _, _ = _restore(reference['trainer'], 20)
  _assert_trees_equal(jax.device_get(state), reference_20, rtol=1e-6)
  assert metrics.read_text() == text[:len(text) // 2]  # left as it was, not deleted
  assert (workdir / 'checkpoints' / '40' / 'state').is_dir()


def test_a_params_only_run_resumes_with_a_fresh_optimizer(reference, data_dirs, tmp_path):
  # What `python -m lm.main --workdir=OUT` does with a run lm.convert/lm.lora_merge wrote.
  ref = reference['trainer']
  workdir = tmp_path / 'run'
  write_run(workdir, ref.config, reference['state']['params'], ref.tokenizer, step=20)
  logs: list[str] = []
  trainer = _trainer(_config(data_dirs), workdir, logs)
  try:
    state, _ = trainer._initial_state()
  finally:
    trainer.checkpoints.close()
  assert int(state['step']) == 20
  _assert_trees_equal(jax.device_get(state['params']), reference['state']['params'])
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state['opt_state'])
             if x.dtype == jnp.float32)  # fresh moments
  assert any('holds no optimizer state' in line for line in logs), logs

  trainer = _trainer(_config(data_dirs), workdir, logs)
  final = trainer.run()
  rows = read_metrics(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows] == [25, 30, 35, 40]
  assert math.isfinite(final['eval/loss'])
  with Checkpointer(workdir / 'checkpoints', read_only=True) as ckpt:
    assert ckpt.all_steps() == [20, 40] and 'opt_state' in ckpt.saved_keys(40)


def test_resuming_with_another_tokenizer_is_refused(reference, data_dirs, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference['workdir'], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  config = _config(data_dirs)
  config.data.tokenizer.kind = 'char'
  trainer = _trainer(config, workdir)
  with pytest.raises(DataError, match=r'tokenizer.*holds another tokenizer \(byte, vocabulary 259'):
    trainer.run()
  assert {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()} == before


# ---- a gs:// workdir -------------------------------------------------------------------------


def _emulator_move(request, response, storage, *args, **kwargs):
  """objects.move within one bucket, as the emulator's own copy, then delete."""
  from gcp_storage_emulator.handlers import objects
  request.params['dest_bucket_name'] = request.params['bucket_name']
  objects.copy(request, response, storage)
  if response.status == 200:
    storage.delete_file(request.params['bucket_name'], request.params['object_id'])


@pytest.fixture
def gcs_emulator(monkeypatch):
  """A local stand-in for Google Cloud Storage (gcp-storage-emulator, in memory) that both
  clients of a gs:// workdir talk to: gcsfs (etils.epath: config, tokenizer, metrics,
  Orbax's step directories) and tensorstore (Orbax's arrays)."""
  pytest.importorskip('gcsfs')
  server_lib = pytest.importorskip('gcp_storage_emulator.server')
  from gcp_storage_emulator import settings
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  # The emulator has no objects.move (gcsfs's rename): its 501 cost ~30 s of gcsfs retries
  # per rename before the copy + delete fallback, so it gets that fallback as the route.
  move_route = (rf'^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
                r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {'POST': _emulator_move})
  monkeypatch.setattr(server_lib, 'HANDLERS', (move_route, *server_lib.HANDLERS))
  server = server_lib.create_server('127.0.0.1', port, in_memory=True, default_bucket='bucket')
  server.start()
  env = {'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',
         'TENSORSTORE_GCS_HTTP_URL': f'http://127.0.0.1:{port}',
         'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test'}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield 'gs://bucket'
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def test_a_gs_workdir_trains_resumes_and_loads(gcs_emulator, data_dirs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a URL taken for a local path would appear here as gs:/
  # No TensorBoard events: tensorboardX's own gs:// writer uploads again whenever Python
  # collects it, long after this server has stopped.
  monkeypatch.setattr(metrics_lib, '_TB_URL_SCHEMES', ())
  workdir = f'{gcs_emulator}/runs/tiny'
  config = _config(data_dirs)
  config.model.num_layers = 1
  config.train.steps, config.train.steps_per_dispatch, config.train.log_every = 2, 1, 1
  config.train.eval_every = config.checkpoint.every = 2
  config.train.sample_tokens = 0
  config.checkpoint.async_save = False
  first = _trainer(config, workdir)
  first.run()
  assert load_run(workdir).step == 2
  assert not any(tmp_path.iterdir())

  config.train.steps = 4
  logs: list[str] = []
  trainer = _trainer(config, workdir, logs)
  final = trainer.run()
  assert any(f'resumed from {workdir}/checkpoints/2 (step 2)' in line for line in logs), logs
  assert [r['step'] for r in read_metrics(f'{workdir}/metrics.jsonl')] == [1, 2, 3, 4]
  assert workdir_lib.read_config(workdir).to_dict() == trainer.config.to_dict()
  assert workdir_lib.checkpoint_steps(workdir) == [2, 4]
  run = load_run(workdir, mesh=trainer.mesh)
  assert run.step == 4 and run.workdir == workdir and run.tokenizer.vocab_size == 259
  assert trainer.evaluate(run.params)['eval/loss'] == pytest.approx(final['eval/loss'],
                                                                     rel=1e-6)
  assert not any(tmp_path.iterdir())
