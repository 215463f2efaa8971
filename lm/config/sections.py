"""The typed config sections: one frozen dataclass per section of configs/default.py.

Field names and nesting are exactly the ConfigDict's (a test checks both ways); defaults
live only in configs/default.py. Each field's annotation is its type and, for a choice, its
`Literal` choices; `positive()` / `non_negative()` / `in_range()` are its value rule; each
section's `problems()` checks its own fields against each other. Checks between sections
are in lm/config/checks.py. Every message names the dotted key and the fix.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator
from typing import Literal

from lm.config.fields import Section, in_range, non_negative, positive
from lm.parallel import axes, presets

MIN_SENTENCEPIECE_VOCAB = 256  # room for the special tokens and every character of a corpus
STDLIB_SOURCES = ('stdlib', 'stdlib:code', 'stdlib:prose')
LoraTarget = Literal['qkv', 'out', 'mlp_in', 'mlp_out']
WeightDecayKind = Literal['norm', 'bias', 'embed']  # lm/train/optimizer.WEIGHT_DECAY_KINDS
WEIGHT_DECAY_KINDS: tuple[str, ...] = WeightDecayKind.__args__
frozen = dataclasses.dataclass(frozen=True)


@frozen
class Tokenizer(Section):
  kind: Literal['sentencepiece', 'byte', 'char', 'hf']
  model_type: Literal['bpe', 'unigram']
  vocab_size: int  # sentencepiece only
  max_train_chars: int = positive()
  path: str  # hf only: a directory holding tokenizer.json

  def problems(self) -> Iterator[str]:
    if self.kind == 'sentencepiece' and self.vocab_size < MIN_SENTENCEPIECE_VOCAB:
      yield (f'data.tokenizer.vocab_size={self.vocab_size} is too small for sentencepiece; use '
             f">= {MIN_SENTENCEPIECE_VOCAB}, or data.tokenizer.kind='byte' for a tiny vocabulary.")

  @property
  def hf_file(self) -> str:
    return os.path.join(os.path.expanduser(self.path), 'tokenizer.json')

  def file_problems(self) -> Iterator[str]:
    if self.kind == 'hf' and not os.path.isfile(self.hf_file):
      yield (f"data.tokenizer.path={self.path!r} holds no tokenizer.json, which "
             "data.tokenizer.kind='hf' needs; give the directory of a Hugging Face tokenizer "
             '(python -m lm.convert from-hf sets it up).')


@frozen
class Data(Section):
  source: Literal['stdlib', 'text', 'tfds']
  path: str
  jsonl_field: str
  tfds_name: str
  tfds_text_feature: str
  tfds_split: str
  tfds_data_dir: str
  split: Literal['document', 'tail']
  val_fraction: float = in_range(0.0, 1.0, lo_inclusive=False)
  max_docs: int = non_negative(' (0: all documents)')
  cache_dir: str
  seq_len: int = positive()
  train_row_stride: int
  mixture: tuple[tuple[str, str, float], ...]
  format: Literal['text', 'sft', 'classify']
  tokenizer: Tokenizer

  def problems(self) -> Iterator[str]:
    if self.source == 'text' and not self.path:
      yield ("data.path is empty but data.source='text' needs one; give a .txt/.jsonl file, "
             "a directory or a glob (e.g. --config.data.path='corpus/*.txt').")
    if self.source == 'tfds' and not self.tfds_name:
      yield ("data.tfds_name is empty but data.source='tfds' needs a TFDS dataset name "
             '(e.g. --config.data.tfds_name=tiny_shakespeare).')
    if self.source == 'tfds' and not self.tfds_split:
      yield ("data.tfds_split is empty but data.source='tfds' reads documents from it; "
             "use e.g. 'train' or 'train[:10%]'.")
    if self.format != 'text' and self.source == 'tfds':
      yield (f"data.format={self.format!r} reads JSONL records (data.source='text') or "
             "generates them (data.source='stdlib'); data.source='tfds' gives only plain "
             'documents.')
    row = self.seq_len + 1  # a training row: seq_len inputs and the next token (lm/data/packing)
    if not 0 <= self.train_row_stride <= row:
      yield (f'data.train_row_stride={self.train_row_stride} must be between 0 and a row, '
             f'data.seq_len + 1 = {row} tokens (0: {row}, rows without overlap; smaller: '
             'overlapping rows); a larger stride would skip tokens of the corpus.')
    yield from self._mixture_problems()

  def _mixture_problems(self) -> Iterator[str]:
    names = set()
    for i, entry in enumerate(self.mixture):
      where = f'data.mixture[{i}]'
      if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], str) and isinstance(entry[2], (int, float))
              and not isinstance(entry[2], bool)):
        yield (f"{where}={entry!r} must be a triple (domain name, source, weight), e.g. "
               "('code', 'stdlib:code', 1.0).")
        continue
      name, source, weight = entry
      if not name or name in names:
        yield f'{where} has an empty or repeated domain name {name!r}; give each domain its own.'
      names.add(name)
      if not weight >= 0:
        yield f'{where} has weight {weight}; weights must be >= 0 (0: evaluated, not trained on).'
      if source.startswith('stdlib') and source not in STDLIB_SOURCES:
        yield (f"{where} source {source!r} is not one of 'stdlib', 'stdlib:code', "
               "'stdlib:prose' or a text file path.")
    weights = [e[2] for e in self.mixture if isinstance(e, tuple) and len(e) == 3
               and isinstance(e[2], (int, float))]
    if weights and not sum(weights) > 0:
      yield 'data.mixture weights are all 0; give at least one domain a positive weight.'

  def file_problems(self) -> Iterator[str]:
    if self.source == 'text' and self.path and not glob.glob(os.path.expanduser(self.path)):
      yield (f'data.path={self.path!r} matches no file; give a .txt/.jsonl file, a directory '
             'or a glob that exists on this machine.')
    for i, entry in enumerate(self.mixture):
      if (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[1], str)
          and not entry[1].startswith('stdlib') and not glob.glob(os.path.expanduser(entry[1]))):
        yield (f'data.mixture[{i}] source {entry[1]!r} matches no file; give a .txt/.jsonl '
               "file, directory or glob that exists, or 'stdlib:code' / 'stdlib:prose'.")


@frozen
class MoE(Section):
  num_experts: int = non_negative()
  top_k: int
  expert_mlp_dim: int = non_negative()
  capacity_factor: float = non_negative()
  shared_expert: bool
  aux_loss_weight: float = non_negative()
  z_loss_weight: float = non_negative()
  every: int
  routing: Literal['learned', 'domain', 'domain+learned']
  num_domains: int = non_negative()

  def problems(self) -> Iterator[str]:
    e, d = self.num_experts, self.num_domains
    if self.top_k not in (1, 2):
      yield f'model.moe.top_k={self.top_k} must be 1 or 2 (experts each token is routed to).'
    if self.every < 1:
      yield (f'model.moe.every={self.every} must be >= 1 (1: every layer is MoE, 2: every '
             'other).')
    if not e:
      return
    if self.routing != 'domain' and self.top_k > e:
      yield f'model.moe.top_k={self.top_k} exceeds model.moe.num_experts={e}.'
    if self.routing == 'learned':
      return
    if d < 1:
      yield (f"model.moe.routing='{self.routing}' needs model.moe.num_domains >= 1 (the number "
             'of data.mixture entries).')
    elif e % d:
      yield (f'model.moe.num_experts={e} is not divisible by model.moe.num_domains={d}; each '
             'domain owns num_experts / num_domains experts.')
    elif self.routing == 'domain+learned' and e // d < self.top_k:
      yield (f'model.moe.top_k={self.top_k} exceeds the {e // d} experts each domain owns '
             f'(num_experts / num_domains = {e}/{d}); lower top_k or add experts.')


@frozen
class Model(Section):
  vocab_size: int = non_negative(' (0: the tokenizer size)')
  num_layers: int = positive()
  width: int = positive()
  num_heads: int = positive()
  num_kv_heads: int = positive()
  mlp_dim: int = positive()
  max_len: int = non_negative(' (0: data.seq_len)')
  norm: Literal['rmsnorm', 'layernorm']
  norm_eps: float = positive()
  mlp: Literal['swiglu', 'gelu']
  position: Literal['rope', 'learned']
  rope_theta: float = positive()
  use_bias: bool
  tie_embeddings: bool
  dropout: float = in_range(0.0, 1.0, lo_inclusive=True)
  init_std: float = positive()
  param_dtype: Literal['float32', 'bfloat16']
  dtype: Literal['float32', 'bfloat16']
  remat: Literal['none', 'full', 'dots']
  unroll_layers: bool
  attention: Literal['xla', 'cudnn', 'auto']
  moe: MoE
  causal: bool
  num_classes: int = non_negative()

  def problems(self) -> Iterator[str]:
    w, h = self.width, self.num_heads
    if w % h:
      yield (f'model.width={w} is not divisible by model.num_heads={h}; change one so that '
             'width / num_heads is the head dimension.')
    elif self.position == 'rope' and (w // h) % 2:
      yield (f'model.position=rope needs an even head dimension, but model.width/'
             f'model.num_heads = {w}/{h} = {w // h}; change model.width or model.num_heads.')
    if h % self.num_kv_heads:
      yield (f'model.num_heads={h} is not divisible by model.num_kv_heads={self.num_kv_heads}; '
             'each key/value head must serve a whole group of query heads.')
    if self.moe.num_experts and self.moe.every >= 1 and self.num_layers % self.moe.every:
      yield (f'model.num_layers={self.num_layers} is not divisible by model.moe.every='
             f'{self.moe.every}; layers are scanned in groups of `every` (one MoE layer per '
             'group).')
    if self.attention == 'cudnn':
      yield from self._cudnn_problems()

  def _cudnn_problems(self) -> Iterator[str]:
    # cuDNN flash attention (jax/_src/cudnn/fused_attention_stablehlo.py, jax 0.10:
    # check_is_flash_attention and _dot_product_attention_fwd) takes fp16/bf16/fp8 inputs
    # only, and for fp16/bf16 a head dim that is a multiple of 8 and <= 128, or <= 256 on
    # Hopper (sm90) and later. The config cannot know the GPU: 256 is checked here, and
    # jax names the 128 limit on older GPUs.
    if self.dtype != 'bfloat16':
      yield (f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention "
             f"takes 16-bit inputs), but model.dtype={self.dtype!r}; set "
             "--config.model.dtype=bfloat16, or model.attention='auto' (cuDNN where it applies).")
    if self.width % self.num_heads == 0:
      hd = self.width // self.num_heads
      if hd % 8 or hd > 256:
        yield (f"model.attention='cudnn' needs a head dimension (model.width/model.num_heads) "
               f'that is a multiple of 8 and <= 256 (<= 128 before Hopper GPUs), but it is '
               f'{self.width}/{self.num_heads} = {hd}; change model.width or model.num_heads, '
               "or use model.attention='auto'.")


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
  lr: float = positive()
  schedule: Literal['cosine', 'linear', 'constant']
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
  task: Literal['lm', 'sft', 'mlm', 'classify']
  mlm_rate: float = in_range(0.0, 1.0, lo_inclusive=False)

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

  def problems(self) -> Iterator[str]:
    if self.cpu_devices < -1:
      yield (f'runtime.cpu_devices={self.cpu_devices} must be >= -1 (0: one device, -1: one '
             'per core, N: N devices).')


@frozen
class Mesh(Section):
  data: int
  fsdp: int
  expert: int
  tensor: int
  dcn_data: int
  dcn_fsdp: int
  dcn_expert: int
  dcn_tensor: int
  preset: Literal['fsdp_tensor', 'data', 'fsdp', 'tensor']  # lm/parallel/presets.PRESETS
  rules: tuple[tuple[str, tuple[str, ...] | str], ...]

  @property
  def ici(self) -> dict[str, int]:
    return {a: getattr(self, a) for a in axes.MESH_AXES}

  @property
  def dcn(self) -> dict[str, int]:
    return {a: getattr(self, f'dcn_{a}') for a in axes.MESH_AXES}

  def problems(self) -> Iterator[str]:
    yield from axes.size_problems(self.ici, self.dcn)
    yield from self.rule_problems()

  def rule_problems(self) -> Iterator[str]:
    seen: set[str] = set()
    for i, rule in enumerate(self.rules):
      where = f'mesh.rules[{i}]'
      if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
        yield (f"{where}={rule!r} must be a pair (logical axis name, mesh axes), e.g. "
               "('embed', ('fsdp',)).")
        continue
      name, mesh_axes = rule
      if name in seen:
        yield f"{where} repeats the logical axis '{name}'; give each logical axis one rule."
      seen.add(name)
      if name not in axes.LOGICAL_AXES:
        yield (f"{where} names the logical axis '{name}', which the model does not have; use "
               f"one of {', '.join(axes.LOGICAL_AXES)}.")
      if mesh_axes is None or isinstance(mesh_axes, str):
        mesh_axes = (mesh_axes,) if mesh_axes else ()
      if not isinstance(mesh_axes, tuple) or not all(isinstance(a, str) for a in mesh_axes):
        yield (f'{where} maps {name!r} to {rule[1]!r}; mesh axes must be a tuple of names from '
               f"{axes.MESH_AXES} ('' or () for replicated).")
        continue
      unknown = [a for a in mesh_axes if a and a not in axes.MESH_AXES]
      if unknown:
        yield (f"{where} maps '{name}' to unknown mesh axes {unknown}; use names from "
               f'{axes.MESH_AXES}.')
      named = [a for a in mesh_axes if a]
      if len(set(named)) != len(named):
        yield f"{where} uses a mesh axis twice for '{name}': {tuple(mesh_axes)}."

  def logical_rules(self) -> dict[str, tuple[str, ...]]:
    """The preset's rules with mesh.rules on top (the preset alone where a rule is bad)."""
    ok = not any(self.rule_problems())
    return dict(presets.preset_rules(self.preset, self.rules if ok else ()))


@frozen
class Config(Section):
  """The whole config, typed: `lm.config.typed(config_dict)` builds it."""
  seed: int
  init_from: str  # a workdir or checkpoint step directory to start from ('' = random init)
  init_from_opt_state: bool
  data: Data
  model: Model
  lora: Lora
  optimizer: Optimizer
  train: Train
  checkpoint: Checkpoint
  runtime: Runtime
  mesh: Mesh

  def problems(self) -> Iterator[str]:
    if self.init_from_opt_state and not self.init_from:
      yield 'init_from_opt_state=True needs init_from (the run whose optimizer state to take).'

  def file_problems(self) -> Iterator[str]:
    if self.init_from and not os.path.isdir(os.path.expanduser(self.init_from)):
      yield (f'init_from={self.init_from!r} is not a directory; give a training workdir or one '
             'of its checkpoints/<step> directories.')
