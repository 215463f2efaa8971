"""The training loop: data -> jit'd steps -> eval, logging, checkpoints -> a sample.

`train(config, workdir)` is the whole run; `lm.main` only parses flags and calls it,
and notebooks call it directly (no absl flags needed). Each run ends with a breakdown of
its wall time (lm/train/timing.py), logged and written to metrics.jsonl as 'time/*'.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import config as config_lib
from lm import parallel
from lm import workdir as workdir_lib
from lm.checkpoint import Checkpointer
from lm.errors import TrainingDiverged
from lm.model import attention_kernels
from lm.train import build, finetune, frozen
from lm.train.metrics import MetricsWriter
from lm.train.sample import sample_tokens
from lm.train.step import summarize_domains, summarize_eval
from lm.train.timing import Breakdown


def _stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Trainer:
  """Holds one run's pieces; `run()` trains to `config.train.steps` (resuming if possible).

  `workdir` is a local path or a URL (gs://...); every file goes through lm.workdir.
  `started_at` (a time.time() value, e.g. the process start) counts the time before the
  Trainer existed (imports) as start-up in the time breakdown.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, log=None,
               started_at: float | None = None):
    self.timing = timing = Breakdown(started_at)
    with timing.phase('startup'):  # device initialisation
      cfg = build.resolve(config)
    self.workdir = workdir_lib.name(workdir)  # a URL stays a URL
    self.writer = MetricsWriter(self.workdir, total_steps=cfg.train.steps, enabled=False)
    self._log = log or print
    with timing.phase('data'):
      self.data = build.prepare_data(cfg, base_tokenizer=finetune.base_tokenizer(cfg),
                                     log=self.log)  # documents or sft/classify records
    with timing.phase('startup'):
      self._build(cfg)

  def _build(self, cfg: ml_collections.ConfigDict) -> None:
    self.domain_names = [entry[0] for entry in cfg.data.mixture]
    self.tokenizer = self.data.tokenizer
    self.setup = setup = build.build(cfg, vocab_size=self.tokenizer.vocab_size)
    self.config = cfg = setup.config  # model.vocab_size filled in
    self.mesh, self.rules, self.model_def = setup.mesh, setup.rules, setup.model_def
    self.optimizer, self.schedule = setup.optimizer, setup.schedule
    self.shardings, self.train_step = setup.shardings, setup.train_step
    self.eval_step = setup.eval_step(self.tokenizer)
    self.config_json = config_lib.to_json(cfg)
    self.checkpoints = Checkpointer(workdir_lib.checkpoint_dir(self.workdir),
                                    keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    self.local_batch = cfg.train.batch_size // jax.process_count()
    self.steps_per_dispatch = cfg.train.steps_per_dispatch
    self._eval_batches: list[dict] | None = None
    self.sharding_table, self.param_bytes = parallel.sharding_report(
        self.model_def.logical_axes(), jax.eval_shape(self.model_def.init_params,
                                                      jax.random.key(0)),
        self.shardings['params'])

  def log(self, msg: str) -> None:
    if jax.process_index() == 0:
      if self.writer.active:
        self.writer.log(msg)
      else:
        self._log(msg)

  # ---- state ------------------------------------------------------------------------------

  def _initial_state(self) -> tuple[dict, Any]:
    """A restored state and data iterator when the workdir has a checkpoint, else fresh.

    A checkpoint without optimizer state (lm.run.write_run: an imported or merged run)
    gives its parameters, its step and a fresh optimizer."""
    cfg = self.config
    with self.timing.phase('data'):
      it = self.data.train_iterator(batch_size=self.local_batch, seed=cfg.seed,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    for step, why in sorted(self.checkpoints.damaged.items()):
      self.log(f'warning: checkpoint step {step} is damaged and left as it was ({why}); '
               'resuming from the newest good one (delete it to let this run save that step '
               'again).')
    step = self.checkpoints.latest_step()
    if step is None:
      state = self.setup.init_state()
      if cfg.init_from:  # a fine-tune: the base run's parameters, at step 0
        params, opt_state = finetune.load_init(cfg, state['params'], self.mesh, self.shardings,
                                               self.optimizer, log=self.log)
        state['params'] = params
        if opt_state is not None:
          state['opt_state'] = opt_state
      return state, it
    self._check_tokenizer()
    target = self.setup.abstract_state()
    if 'opt_state' not in self.checkpoints.saved_keys(step):
      with self.timing.phase('checkpoint'):
        params, _ = self.checkpoints.restore_params(target['params'], step)
      state = self.setup.init_state()
      state['params'] = params
      state['step'] = jax.device_put(jnp.asarray(step, jnp.int32), self.shardings['step'])
      self.log(f'started from the parameters of {self.checkpoints.step_path(step)} (step '
               f'{step}; it holds no optimizer state, so the optimizer starts fresh)')
      return state, it
    with self.timing.phase('checkpoint'):
      state, data_state, _ = self.checkpoints.restore(target, step)
    if data_state:  # an imported checkpoint has no data position yet
      it.set_state(data_state)
    self.log(f'resumed from {self.checkpoints.step_path(step)} (step {step})')
    return state, it

  def _check_tokenizer(self) -> None:
    """On resume, the data's tokenizer must be the one the workdir saved (same ids)."""
    if workdir_lib.has_tokenizer(self.workdir):
      workdir_lib.check_same_tokenizer(
          workdir_lib.load_tokenizer(self.workdir), self.tokenizer,
          self.data.val_text_sample(4000),
          where=f'the workdir ({workdir_lib.name(workdir_lib.tokenizer_dir(self.workdir))})')

  def summary(self) -> str:
    cfg, m = self.config, self.model_def.cfg
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    return '\n'.join([
        f'model: {m.num_layers} layers, width {m.width}, {m.num_heads} heads '
        f'({m.num_kv_heads} kv), {m.norm}/{m.mlp}/{m.position}, vocab {m.vocab_size}',
        f'parameters: {m.param_count():,} ({m.active_param_count():,} active per token)   '
        'FLOPs/token (train): '
        f'{m.flops_per_token(cfg.data.seq_len):,}',
        f'devices: {jax.device_count()} x {jax.devices()[0].platform} in '
        f'{jax.process_count()} process(es); mesh {dict(self.mesh.shape)}; parameters '
        f'{self.param_bytes["bytes"] / 2**20:.1f} MiB, '
        f'{self.param_bytes["bytes_per_device"] / 2**20:.1f} MiB per device '
        f'({workdir_lib.SHARDING_FILE} has every parameter)',
        f'batch: {cfg.train.batch_size} x {cfg.data.seq_len} = {tokens_per_step:,} tokens/step; '
        f'{cfg.train.steps} steps = {tokens_per_step * cfg.train.steps:,} tokens',
        f'workdir: {self.workdir}',
        self._attention_line(),
    ] + build.summary_lines(self.model_def, self.optimizer, cfg))

  def _attention_line(self) -> str:
    """Which attention implementation the model runs here and why (model.attention)."""
    t = self.config.data.seq_len
    impl, why = attention_kernels.choose(self.model_def.cfg, jax.default_backend(), q_len=t,
                                         kv_len=t)
    return f'attention: {impl} (model.attention={self.config.model.attention!r}; {why})'

  # ---- the loop ---------------------------------------------------------------------------

  def evaluate(self, params) -> dict[str, float]:
    """Eval loss, perplexity and bits/byte (and per domain) of `params` on the eval batches
    (one compiled program, every batch dispatched before the sums are read back)."""
    cfg = self.config
    if self._eval_batches is None:  # built on first use, then reused
      local = self.data.eval_batches(batch_size=self.local_batch,
                                     num_batches=cfg.train.eval_batches,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
      sharding = self.setup.eval_batch_sharding
      self._eval_batches = [parallel.global_batch(b, sharding) for b in local]
    sums = [self.eval_step(params, b) for b in self._eval_batches]
    return {**summarize_eval(sums), **summarize_domains(sums, self.domain_names)}

  def run(self) -> dict[str, Any]:
    """Trains to the configured step count (or train.target_eval_loss); returns the final
    metrics, the time breakdown ('time/*') included."""
    cfg, timing = self.config, self.timing
    workdir_lib.path(self.workdir).mkdir(parents=True, exist_ok=True)
    # Restore before writing config.json: a checkpoint this config cannot resume leaves the
    # workdir's config.json as it was.
    try:
      with timing.phase('startup'):  # a fresh state (a restore counts as 'checkpoint')
        self.data = frozen.attach(self.setup, self.data, self.workdir, log=self.log)  # dpo/distill
        state, it = self._initial_state()
    except BaseException:
      self.checkpoints.close()
      raise
    if jax.process_index() == 0:
      with timing.phase('checkpoint'):
        workdir_lib.write_config(self.workdir, cfg)
        workdir_lib.save_tokenizer(self.workdir, self.tokenizer)
        workdir_lib.sharding_path(self.workdir).write_text(self.sharding_table + '\n')
    start = int(state['step'])
    self.log(self.summary())
    self.writer = MetricsWriter(self.workdir, total_steps=cfg.train.steps, start_step=start)
    try:
      if start == 0 and cfg.train.task == 'dpo':
        self._eval_at_start(state['params'])
      with timing.phase('train'):
        state, step, final, last_row = self._loop(state, it, start)
      with timing.phase('checkpoint'):
        self.checkpoints.close()  # waits for an asynchronous save to finish
      if cfg.train.sample_tokens > 0 and cfg.train.task in ('lm', 'sft'):
        with timing.phase('sample'):
          final['sample'] = self.sample(state['params'])
      times = timing.finish()
      final.update(times)
      if last_row is not None:  # the last step's row, with the breakdown, in metrics.jsonl
        self._report(step, {**last_row, **times})
      self.log(timing.table())
    finally:
      self.checkpoints.close()
      self.writer.close()
    return final

  def _loop(self, state: dict, it, start: int
            ) -> tuple[dict, int, dict[str, Any], dict[str, float] | None]:
    """The steps from `start`: dispatches, log rows, evals, checkpoints, the profile.
    Returns the state, its step, the final metrics and the last step's row, not yet
    written (run() adds the time breakdown to it)."""
    cfg, timing = self.config, self.timing
    k = self.steps_per_dispatch
    batch_sharding = self.setup.batch_sharding
    final: dict[str, Any] = {}
    # (last step of a dispatch, its device metrics), not yet read back. A plain log step's
    # row is read only after the next dispatch is queued, so the device never waits for
    # the host; eval and checkpoint steps read back at once (they need the state).
    pending: list[tuple[int, dict]] = []
    deferred: int | None = None
    step, data_state = start, it.get_state()
    self._t_last, self._step_last = time.perf_counter(), start
    profile = Profile(cfg.train, workdir_lib.name(workdir_lib.tb_dir(self.workdir)), log=self.log)
    try:
      while step < cfg.train.steps:
        n = min(k, cfg.train.steps - step)
        profile.before(step, n)
        batches = _stack([next(it) for _ in range(n)])
        data_state = it.get_state()
        state, metrics = self.train_step(state, parallel.global_batch(batches, batch_sharding,
                                                                      batch_axis=1))
        step += n
        profile.after(step, state)
        pending.append((step, metrics))
        if deferred is not None:
          final.update(self._report(deferred, self._train_row(pending, deferred)))
          deferred = None
        last = step == cfg.train.steps
        do_eval = step % cfg.train.eval_every == 0 or last
        do_ckpt = step % cfg.checkpoint.every == 0 or last
        if not (do_eval or do_ckpt):
          if step % cfg.train.log_every == 0:
            deferred = step
          continue
        # The train row first: it waits for the steps dispatched so far. Queued behind
        # them, the eval's dispatch would wait for them too (it did on CPU: 0.8 s of a
        # 10-step dispatch counted as eval), and the breakdown must not count train as eval.
        row = self._train_row(pending, step)
        if do_eval:
          with timing.phase('eval'):
            row.update(self.evaluate(state['params']))
          self.log(f'step {step}: train loss {row["train/loss"]:.4f}, '
                   f'eval loss {row["eval/loss"]:.4f}, '
                   f'bits/byte {row["eval/bits_per_byte"]:.3f}')
          if 'eval/accuracy' in row:
            self.log(f'step {step}: eval accuracy {row["eval/accuracy"]:.4f}')
          if 'eval/reward_accuracy' in row:
            self.log(f'step {step}: eval reward accuracy {row["eval/reward_accuracy"]:.4f}, '
                     f'margin {row["eval/margin"]:.4f}')
          target = cfg.train.get('target_eval_loss', 0.0)
          if target > 0 and row['eval/loss'] <= target:
            row['time/to_target_s'] = timing.row()['time/wall_s']
            self.log(f'step {step}: eval loss {row["eval/loss"]:.4f} <= train.target_eval_loss '
                     f'{target}, {row["time/to_target_s"]:.1f} s since the start; stopping')
            do_ckpt = last = True
        final.update(row if last else self._report(step, row))
        if do_ckpt:
          with timing.phase('checkpoint'):
            self.checkpoints.save(step, state, data_state=data_state,
                                  config_json=self.config_json, eval_loss=row.get('eval/loss'))
        self._t_last = time.perf_counter()  # eval and checkpoint time is not training time
        if last:
          return state, step, final, row
    except KeyboardInterrupt:
      # `state` and `data_state` always belong together: both are from the last dispatch.
      jax.block_until_ready(state)
      # A NaN since the last read-back must not become the latest checkpoint.
      self._check_finite(pending, step, interrupted=True)  # raises TrainingDiverged
      for log_step in sorted({deferred, step if step % cfg.train.log_every == 0 else None}
                             - {None}):
        if any(end <= log_step for end, _ in pending):  # rows the resumed run will not redo
          self._report(log_step, self._train_row(pending, log_step))
      self.log(f'interrupted: saving step {step} to {self.checkpoints.directory}')
      self.checkpoints.save(step, state, data_state=data_state, config_json=self.config_json)
      raise
    finally:
      profile.stop()
    return state, step, final, None

  def _eval_at_start(self, params) -> None:
    """DPO's held-out metrics before the first step (metrics.jsonl step 0): the baseline
    its reward accuracy rises from (0.5 exactly against the reference)."""
    with self.timing.phase('eval'):
      row = self.evaluate(params)
    self.writer.write(0, row)
    self.log(f'step 0: eval loss {row["eval/loss"]:.4f}, eval reward accuracy '
             f'{row["eval/reward_accuracy"]:.4f}, margin {row["eval/margin"]:.4f}')

  def _train_row(self, pending: list[tuple[int, dict]], upto: int) -> dict[str, float]:
    """Reads back the metrics of the dispatches ending at or before `upto` (and removes
    them from `pending`); raises TrainingDiverged on a NaN/inf loss or gradient."""
    done = [m for end, m in pending if end <= upto]
    losses, norms = self._check_finite(pending, upto)
    del pending[:len(done)]
    now = time.perf_counter()
    row = {'train/loss': float(losses.mean()), 'train/grad_norm': float(norms[-1]),
           'train/lr': float(np.asarray(done[-1]['train/lr'])[-1])}
    # Wall-clock rate since the previous row; the first row of a run includes compilation.
    tokens = (upto - self._step_last) * self.config.train.batch_size * self.config.data.seq_len
    row['train/tokens_per_sec'] = tokens / max(now - self._t_last, 1e-9)
    for key in done[-1]:  # MoE statistics per layer (and dpo/distill's), averaged
      if key not in row:
        row[key] = float(np.mean(np.concatenate([np.asarray(m[key]) for m in done])))
    self._t_last, self._step_last = now, upto
    return row

  def _check_finite(self, pending: list[tuple[int, dict]], upto: int, *,
                    interrupted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(losses, gradient norms) of the dispatches in `pending` ending at or before `upto`;
    raises TrainingDiverged on a NaN/inf among them (nothing is saved then)."""
    done = [m for end, m in pending if end <= upto]
    if not done:
      return np.zeros(0), np.zeros(0)
    losses = np.concatenate([np.asarray(m['train/loss']) for m in done])
    norms = np.concatenate([np.asarray(m['train/grad_norm']) for m in done])
    bad = ~(np.isfinite(losses) & np.isfinite(norms))
    if bad.any():
      first = int(np.argmax(bad))
      what = ('interrupted, and not saved: ' if interrupted else '') + (
          f'loss {losses[first]}, gradient norm {norms[first]} at step '
          f'{upto - len(losses) + first + 1}')
      raise TrainingDiverged(
          f'{what}; stopping. The last good checkpoint ({self.checkpoints.latest_step()}) is '
          f'intact in {self.checkpoints.directory}. Lower optimizer.lr or raise '
          'optimizer.warmup_steps.')
    return losses, norms

  def _report(self, step: int, row: dict[str, float]) -> dict[str, float]:
    self.writer.write(step, row)
    self.writer.progress(step, loss=row['train/loss'], tokens_per_sec=row['train/tokens_per_sec'])
    return row

  def sample(self, params) -> str:
    """Continues a validation-text prompt and writes prompt + continuation to the workdir."""
    cfg = self.config
    prompt_text = self.data.val_text_sample(4 * cfg.train.sample_prompt_tokens + 64)
    prompt_ids = self.tokenizer.encode(prompt_text)[:cfg.train.sample_prompt_tokens]
    ids = sample_tokens(self.model_def, params, prompt_ids, num_tokens=cfg.train.sample_tokens,
                        temperature=cfg.train.sample_temperature, seed=cfg.seed,
                        window=cfg.data.seq_len, mesh=self.mesh, rules=self.rules)
    prompt, continuation = self.tokenizer.decode(prompt_ids), self.tokenizer.decode(ids)
    if jax.process_index() == 0:
      workdir_lib.sample_path(self.workdir).write_text(prompt + continuation)
      self._log(f'---- sample (prompt from the validation split) ----\n{prompt}'
                f'{continuation}\n----')
    return prompt + continuation


class Profile:
  """A jax.profiler trace of the dispatches covering steps train.profile_start_step + 1 ..
  + train.profile_steps, written under `log_dir` (TensorBoard's profile plugin reads it
  there; the perfetto_trace.json.gz beside it opens in ui.perfetto.dev)."""

  def __init__(self, train_cfg, log_dir: str, *, log):
    self.first = train_cfg.get('profile_start_step', 0) + 1
    self.last = self.first + train_cfg.get('profile_steps', 0) - 1
    self.log_dir, self._log, self.active = log_dir, log, False
    self.enabled = self.last >= self.first

  def before(self, step: int, n: int) -> None:
    """Starts the trace before the dispatch of steps step+1 .. step+n if it is profiled."""
    if self.enabled and not self.active and step < self.last and step + n >= self.first:
      jax.profiler.start_trace(self.log_dir, create_perfetto_trace=True)
      self.active = True
      self._from = step + 1

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)  # the trace holds the device work of its steps
      self.stop()
      self.log(f'profile of steps {self._from}..{step} written to {self.log_dir}/plugins/'
               'profile (TensorBoard: --logdir on that tb/ directory; Perfetto: the '
               'perfetto_trace.json.gz there)')

  def log(self, msg: str) -> None:
    self._log(msg)

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.enabled = False


def train(config: ml_collections.ConfigDict, workdir: str, *,
          started_at: float | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run `config` in `workdir`; returns the final metrics.
  `started_at` (time.time() of e.g. the process start) counts earlier time as start-up."""
  return Trainer(config, workdir, started_at=started_at).run()
