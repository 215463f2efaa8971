"""Plan a run before renting the machine: parameters, FLOPs per token and the memory each
device needs for parameters, optimizer state, gradients and activations under a config's
mesh and remat policy (`python -m lm plan`, lm/cli/plan.py).

The estimate and the check both come from lm.train.build, the set-up `python -m lm.main`
trains with (the LoRA optimizer, the preset's batch rule, the task's batch): the check
lowers and compiles that train step with abstract (ShapeDtypeStruct) state, never
allocating the weights, and reads XLA's memory analysis.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import jax
import numpy as np

from lm import parallel
from lm.data.tokenizers import ByteTokenizer
from lm.errors import ConfigError
from lm.model import attention_kernels
from lm.runtime import DEVICE_COUNT_FLAG
from lm.train import build

REEXEC_ENV = 'LM_PLAN_CHILD'  # set in a re-executed child so that it never recurses


@dataclasses.dataclass
class Plan:
  """What one device holds under a config, in bytes, and the model's size and cost."""

  config: Any  # the resolved ConfigDict (vocab size filled in)
  model_cfg: Any  # lm.model.ModelConfig
  mesh_shape: dict[str, int]
  num_devices: int
  param_count: int
  flops_per_token: int
  tokens_per_step: int
  microbatch_rows_per_device: int
  # component -> (bytes over all devices, bytes on the fullest device)
  memory: dict[str, tuple[int, int]]
  batch_bytes_per_device: int  # the K-step batch the train step takes as an argument
  other_state_bytes: int  # the step counter and RNG key, replicated
  setup: build.TrainSetup | None = None  # what compile_memory compiles
  xla: dict[str, int] | None = None  # compiled.memory_analysis(), when compiled
  xla_platform: str = ''  # the devices it was compiled for ('cpu', 'gpu', 'tpu')

  def per_device(self, component: str) -> int:
    return self.memory[component][1]

  @property
  def total_per_device(self) -> int:
    return sum(per for _, per in self.memory.values())


# ---- the estimate -----------------------------------------------------------------------


def resolve_vocab_size(config, vocab_size: int = 0) -> int:
  """The tokenizer's vocabulary, without reading the data: the config's, the flag's, or
  what the tokenizer kind implies (sentencepiece: at most its vocab_size)."""
  if config.model.vocab_size:
    return int(config.model.vocab_size)
  if vocab_size:
    return vocab_size
  tok = config.data.tokenizer
  if tok.kind == 'sentencepiece':
    return int(tok.vocab_size)
  if tok.kind == 'byte':
    return ByteTokenizer().vocab_size
  raise ConfigError(
      f"model.vocab_size is 0 and data.tokenizer.kind={tok.kind!r} takes its vocabulary from "
      'the data; give --vocab_size=N (or --config.model.vocab_size=N) to plan without it.')


def _shard_bytes(abstract, shardings) -> tuple[int, int]:
  """(bytes of all leaves, bytes of their shards on one device) for matching pytrees."""
  total = per_device = 0
  for a, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
    itemsize = a.dtype.itemsize
    total += math.prod(a.shape) * itemsize
    per_device += math.prod(sh.shard_shape(a.shape)) * itemsize
  return total, per_device


def attention_impl(model_cfg, platform: str, seq_len: int) -> str:
  """The attention implementation the model runs on `platform` at `seq_len` (an explicit
  model.attention as given, even off its hardware: a plan may be made elsewhere)."""
  if model_cfg.attention != 'auto':
    return model_cfg.attention
  return attention_kernels.choose(model_cfg, platform, q_len=seq_len, kv_len=seq_len)[0]


def activation_bytes(model_cfg, *, rows: int, seq_len: int, tensor: int,
                     sequence: int = 1, platform: str = 'cpu') -> int:
  """Activations one device keeps for the backward pass of `rows` rows [T tokens each].

  Counts the tensors the chosen remat policy saves per layer, plus one layer's full set
  (what the backward pass recomputes or holds at a time) and the float32 logits and their
  gradient. Head, MLP and vocabulary activations are split over the tensor axis, every
  token's activations over the sequence axis (context parallelism), whose attention still
  sees the whole row: its queries' scores span all T keys and it holds the gathered K/V.
  """
  m = model_cfg
  a = m.jnp_dtype.itemsize
  b, d, n, k, h, f = rows, m.width, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim
  t = max(seq_len // sequence, 1)  # this device's tokens of each row
  btd = b * t * d * a
  qkv = b * t * (n + 2 * k) * h * a // tensor
  mlp_in = b * t * f * (2 if m.mlp == 'swiglu' else 1) * a // tensor
  mlp_hidden = b * t * f * a // tensor
  # What the attention implementation keeps: XLA the float32 probabilities [B, N, T, T];
  # the blockwise and fused kernels a log-sum-exp per query (+ their working tiles, and
  # cuDNN the [B, 1, T, T] segment bias) and recompute the rest in the backward pass.
  # Under context parallelism this device's T / sequence queries see all T keys.
  scores = attention_kernels.score_bytes_kept(
      attention_impl(m, platform, seq_len), rows=b, heads=n, q_len=t, kv_len=t * sequence
  ) // tensor
  # Everything one block keeps when nothing is rematerialized: residual stream, norm outputs,
  # q/k/v (before and after RoPE), attention probabilities and output, MLP in/hidden/out.
  gathered_kv = 2 * b * t * sequence * k * h * a // tensor if sequence > 1 else 0
  full_layer = (6 * btd + qkv + gathered_kv + b * t * (n + k) * h * a // tensor + scores
                + b * t * n * h * a // tensor + mlp_in + mlp_hidden)
  if m.remat == 'none':
    kept = m.num_layers * full_layer
  elif m.remat == 'dots':  # block input + outputs of the matmuls without batch dims
    kept = m.num_layers * (btd + qkv + btd + mlp_in + btd) + full_layer
  else:  # 'full': only each block's input, and one block recomputed at a time
    kept = m.num_layers * btd + full_layer
  logits = 2 * b * t * m.vocab_size * 4 // tensor  # float32 logits and their gradient
  return kept + btd + logits


def make_plan(config, *, num_devices: int, vocab_size: int = 0, devices=None) -> Plan:
  """The estimate for `config` on `num_devices` devices (the first N of `devices` or of
  jax.devices()); builds abstract shapes only, never the weights."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) < num_devices:
    raise ConfigError(f'planning for {num_devices} devices needs that many, found '
                      f'{len(devices)}; run `python -m lm plan` (it re-executes itself with '
                      'fake CPU devices)')
  cfg = build.resolve(config, num_devices=num_devices)
  setup = build.build(cfg, vocab_size=resolve_vocab_size(cfg, vocab_size),
                      devices=devices[:num_devices])
  cfg, model_cfg, shardings = setup.config, setup.model_def.cfg, setup.shardings
  abstract = setup.abstract_state()
  params = _shard_bytes(abstract['params'], shardings['params'])
  opt = _shard_bytes(abstract['opt_state'], shardings['opt_state'])
  other = _shard_bytes([abstract['step'], abstract['rng']], [shardings['step'], shardings['rng']])
  # Gradients have the parameters' shapes, dtypes and shardings; accumulating over
  # microbatches keeps a second such tree (the running sum) alive.
  grad_copies = 1 if cfg.train.grad_accum == 1 else 2
  grads = (grad_copies * params[0], grad_copies * params[1])
  sizes = dict(setup.mesh.shape)
  micro_rows = cfg.train.batch_size // cfg.train.grad_accum
  rows_per_device = max(micro_rows // setup.batch_ways, 1)
  act = activation_bytes(model_cfg, rows=rows_per_device, seq_len=cfg.data.seq_len,
                         tensor=sizes.get('tensor', 1), sequence=sizes.get('sequence', 1),
                         platform=devices[0].platform)
  # Activations are not replicated: each device holds its rows' (total = per device x N).
  memory = {'parameters': params, 'optimizer state': opt, 'gradients': grads,
            'activations': (act * num_devices, act)}
  batch_bytes = sum(math.prod(shape) * np.dtype(dtype).itemsize
                    for shape, dtype in setup.batch_shapes().values()) // setup.batch_ways
  t = cfg.data.seq_len
  return Plan(config=cfg, model_cfg=model_cfg, mesh_shape=sizes, num_devices=num_devices,
              param_count=model_cfg.param_count(), flops_per_token=model_cfg.flops_per_token(t),
              tokens_per_step=cfg.train.batch_size * t,
              microbatch_rows_per_device=rows_per_device, memory=memory,
              batch_bytes_per_device=batch_bytes, other_state_bytes=other[1], setup=setup)


# ---- the check: compile with abstract state -----------------------------------------------


def compile_memory(plan: Plan) -> dict[str, int]:
  """Lowers and compiles the train step of `plan` (lm.train.build's, on the plan's devices)
  with abstract state and batches (nothing is allocated); XLA's memory analysis in bytes."""
  setup = plan.setup
  compiled = setup.train_step.lower(setup.abstract_state(), setup.abstract_batches()).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    raise RuntimeError(f'XLA gives no memory analysis on {setup.mesh.devices.flat[0].platform}')
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes', 'generated_code_size_in_bytes')
  plan.xla_platform = setup.mesh.devices.flat[0].platform
  return {f.removesuffix('_size_in_bytes'): int(getattr(analysis, f, 0) or 0) for f in fields}


# ---- printing -----------------------------------------------------------------------------


def human_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
    if abs(n) < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.2f} {unit}'
    n /= 1024
  return f'{n:.2f} TiB'


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = [header, tuple('-' * w for w in widths), *rows]
  return '\n'.join('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                   for r in lines)


def format_plan(plan: Plan, *, device_memory_gib: float = 0.0) -> str:
  cfg, m = plan.config, plan.model_cfg
  mesh = ', '.join(f'{a}={s}' for a, s in plan.mesh_shape.items())
  lines = [
      f'model: {m.num_layers} layers, width {m.width}, {m.num_heads} heads ({m.num_kv_heads} '
      f'kv), mlp {m.mlp_dim}, vocab {m.vocab_size}, params {m.param_dtype} / compute '
      f'{m.dtype}, remat {m.remat}',
      f'parameters: {plan.param_count:,}',
      f'FLOPs per token (train, seq {cfg.data.seq_len}): {plan.flops_per_token:,}; per step '
      f'({plan.tokens_per_step:,} tokens): {plan.flops_per_token * plan.tokens_per_step:.3e}'
      + (' (+ the forward again for remat full)' if m.remat == 'full' else ''),
      f'devices: {plan.num_devices}; mesh {mesh}; batch {cfg.train.batch_size} rows '
      f'/ {cfg.train.grad_accum} microbatch(es) -> {plan.microbatch_rows_per_device} row(s) '
      'per device per microbatch',
      '',
  ]
  rows = [(name, human_bytes(per), human_bytes(total))
          for name, (total, per) in plan.memory.items()]
  rows.append(('total', human_bytes(plan.total_per_device),
               human_bytes(sum(t for t, _ in plan.memory.values()))))
  lines.append(_table(('memory (estimate)', 'per device', 'whole run'), rows))
  lines.append('(whole run: parameters and optimizer state once, without replicas; '
               'activations summed over the devices)')
  if device_memory_gib > 0:
    need, have = plan.total_per_device, device_memory_gib * 2**30
    verdict = 'fits' if need <= have else 'does NOT fit'
    lines.append(f'{verdict} in {device_memory_gib:g} GiB per device '
                 f'({100 * need / have:.0f}% of it, before XLA workspace and fragmentation)')
  if plan.xla is not None:
    lines += ['', *_xla_lines(plan)]
  return '\n'.join(lines)


def _xla_lines(plan: Plan) -> list[str]:
  x = plan.xla
  state = (plan.per_device('parameters') + plan.per_device('optimizer state')
           + plan.other_state_bytes)
  transient = plan.per_device('gradients') + plan.per_device('activations')
  peak = x['argument'] + x['output'] - x['alias'] + x['temp']
  lines = [
      f'XLA memory analysis of the compiled train step (per device, {plan.num_devices} '
      f'{plan.xla_platform.upper() or "?"} devices, abstract state):',
      _table(('', 'XLA', 'estimate'), [
          ('arguments (state + batches)', human_bytes(x['argument']),
           human_bytes(state + plan.batch_bytes_per_device)),
          ('outputs', human_bytes(x['output']), human_bytes(state)),
          ('aliased (donated state)', human_bytes(x['alias']), human_bytes(state)),
          ('temporaries (grads + activations)', human_bytes(x['temp']), human_bytes(transient)),
          ('peak (args + outputs - aliased + temp)', human_bytes(peak),
           human_bytes(plan.total_per_device + plan.batch_bytes_per_device)),
      ]),
  ]
  if plan.xla_platform in ('cpu', ''):
    lines.append('The CPU compiler fuses and schedules differently from TPU/GPU ones (and may '
                 'compute bfloat16 in float32): read its temporaries as an order of magnitude.')
  return lines


# ---- devices ------------------------------------------------------------------------------


def default_devices(config) -> int:
  """The devices a config's mesh names (ici x dcn, every device of every slice/host) when
  none is -1, else this process's device count."""
  sizes = [config.mesh[k] for a in parallel.MESH_AXES for k in (a, f'dcn_{a}')
           if k in config.mesh]
  if sizes and -1 not in sizes:
    return math.prod(sizes)
  return jax.device_count()


def reexec_env(num_devices: int) -> dict[str, str]:
  """The environment of a child process with `num_devices` fake CPU devices."""
  env = dict(os.environ)
  xla = re.sub(rf'{DEVICE_COUNT_FLAG}=\S+', '', env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = f'{xla} {DEVICE_COUNT_FLAG}={num_devices}'.strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env[REEXEC_ENV] = '1'
  return env
