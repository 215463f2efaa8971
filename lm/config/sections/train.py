"""The sections of how a run trains: lora, optimizer, train, checkpoint, runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

from lm.config.fields import Section, in_range, non_negative, positive
from lm.config.sections.base import frozen

LoraTarget = Literal['qkv', 'out', 'mlp_in', 'mlp_out']
WeightDecayKind = Literal['norm', 'bias', 'embed']  # lm/train/optimizer.WEIGHT_DECAY_KINDS
WEIGHT_DECAY_KINDS: tuple[str, ...] = WeightDecayKind.__args__


@frozen
class Lora(Section):
  rank: int = non_negative()
  alpha: float = positive()
  dropout: float = in_range(0.0, 1.0, lo_inclusive=True)
  targets: tuple[LoraTarget, ...]

  def problems(self) -> Iterator[str]:
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    if bad:
      yield f'lora.targets has unknown projections {bad}; choose from {LORA_TARGETS}.'
    if self.rank > 0 and not self.targets:
      yield ('lora.rank > 0 but lora.targets is empty; name the projections that get adapters, '
             f'e.g. {LORA_TARGETS[:2]}.')


LORA_TARGETS: tuple[str, ...] = LoraTarget.__args__


@frozen
class Optimizer(Section):
  name: Literal['adamw', 'muon']
  lr: float = positive()
  schedule: Literal['cosine', 'linear', 'constant', 'wsd']
  decay_fraction: float = in_range(0.0, 1.0, lo_inclusive=True)
  muon_lr: float = positive()
  muon_momentum: float = in_range(0.0, 1.0, lo_inclusive=True)
  muon_ns_steps: int = positive()
  warmup_steps: int = non_negative()
  min_lr: float = non_negative()
  b1: float = in_range(0.0, 1.0, lo_inclusive=True)
  b2: float = in_range(0.0, 1.0, lo_inclusive=True)
  eps: float = positive()
  weight_decay: float = non_negative()
  weight_decay_exclude: tuple[WeightDecayKind, ...]
  grad_clip: float = non_negative(' (0 disables clipping)')

  def problems(self) -> Iterator[str]:
    kinds = WEIGHT_DECAY_KINDS
    bad = [k for k in self.weight_decay_exclude if k not in kinds]
    if bad:
      yield (f'optimizer.weight_decay_exclude has unknown parameter kinds {bad}; choose from '
             f'{kinds} (an unknown kind would be decayed after all).')
    if self.min_lr > self.lr:
      yield (f'optimizer.min_lr={self.min_lr} is above optimizer.lr={self.lr}; the schedule '
             'decays from lr to min_lr.')


DpoLoss = Literal['sigmoid', 'simpo', 'orpo']
REFERENCE_FREE_LOSSES: tuple[str, ...] = ('simpo', 'orpo')  # no reference model is run


@frozen
class Dpo(Section):
  """train.dpo: preference tuning (lm/train/preference.py)."""
  loss: DpoLoss
  beta: float = positive()
  label_smoothing: float = in_range(0.0, 0.5, lo_inclusive=True)
  simpo_gamma: float = non_negative()
  orpo_lambda: float = non_negative()
  reference: Literal['model', 'precomputed']


@frozen
class Distill(Section):
  """train.distill: knowledge distillation (lm/train/distill.py)."""
  teacher: str  # the teacher's workdir (loaded with lm.run.load_run)
  alpha: float
  temperature: float = positive()
  offline_top_k: int = non_negative(' (0: the teacher runs in every step)')

  def problems(self) -> Iterator[str]:
    if not 0.0 <= self.alpha <= 1.0:
      yield (f'train.distill.alpha={self.alpha} is out of range; it must satisfy 0 <= value <= 1 '
             '(the weight of the KL term; 1 - alpha weighs the cross entropy).')
    if self.offline_top_k == 1:
      yield ('train.distill.offline_top_k=1 keeps only the teacher\'s top token, whose '
             'renormalised probability is always 1; use 0 (online) or at least 2.')

  def file_problems(self) -> Iterator[str]:
    if self.teacher and not os.path.isdir(os.path.expanduser(self.teacher)) and (
        '://' not in self.teacher):
      yield (f'train.distill.teacher={self.teacher!r} is not a directory; give the workdir of '
             'a trained run (with config.json and checkpoints/).')


@frozen
class Train(Section):
  steps: int = positive()
  batch_size: int = positive()
  grad_accum: int = positive()
  steps_per_dispatch: int = positive()
  log_every: int = positive()
  eval_every: int = positive()
  eval_batches: int = positive()
  sample_tokens: int = non_negative()
  sample_prompt_tokens: int = non_negative()
  sample_temperature: float = non_negative()
  task: Literal['lm', 'sft', 'mlm', 'classify', 'dpo', 'distill']
  mlm_rate: float = in_range(0.0, 1.0, lo_inclusive=False)
  target_eval_loss: float = non_negative(' (0: train all train.steps)')
  profile_start_step: int = non_negative()
  profile_steps: int = non_negative(' (0: no trace)')
  dpo: Dpo
  distill: Distill

  def problems(self) -> Iterator[str]:
    if self.batch_size % self.grad_accum:
      yield (f'train.batch_size={self.batch_size} is not divisible by train.grad_accum='
             f'{self.grad_accum}; each microbatch must have the same number of rows.')
    for key, v in (('train.log_every', self.log_every), ('train.eval_every', self.eval_every)):
      yield from dispatch_multiple(key, v, self.steps_per_dispatch)


def dispatch_multiple(key: str, v: int, k: int) -> Iterator[str]:
  if v % k:
    yield (f'{key}={v} is not a multiple of train.steps_per_dispatch={k}: the loop only sees '
           f'the state between dispatches; use e.g. {key}={max(k, v // k * k)}.')


@frozen
class Checkpoint(Section):
  every: int = positive()
  keep: int = positive()
  async_save: bool


@frozen
class Runtime(Section):
  cpu_devices: int
  compilation_cache_dir: str
  compilation_cache_min_compile_secs: float = non_negative()

  def problems(self) -> Iterator[str]:
    if self.cpu_devices < -1:
      yield (f'runtime.cpu_devices={self.cpu_devices} must be >= -1 (0: one device, -1: one '
             'per core, N: N devices).')
