"""The checks between config sections, and `typed` / `validate` / `resolve`.

`validate` checks keys (against configs/default.py) and types (against the typed sections)
first; then every field's choices and rules and each section's own checks
(lm/config/sections/); then the checks here, which relate sections to each other and
to the device count. All problems of a stage are reported at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import ml_collections
import tokenizers

from lm.config import fields, keys
from lm.config.load import default_config
from lm.config.sections import LORA_TARGETS, REFERENCE_FREE_LOSSES, Config, dispatch_multiple
from lm.errors import ConfigError
from lm.parallel import axes, presets

ConfigDict = ml_collections.ConfigDict

# train.task -> the data.format it reads
TASK_FORMATS = {'lm': 'text', 'mlm': 'text', 'sft': 'sft', 'classify': 'classify',
                'dpo': 'preference', 'distill': 'text'}


def typed(config: ConfigDict) -> Config:
  """The typed view of `config`: ConfigError when a key is unknown or missing or a value has
  the wrong type (values are checked by `validate`)."""
  base = default_config()
  problems = keys.key_problems(config, base) + fields.type_problems(
      config, Config, dict(keys.leaves(base)))
  if problems:
    raise ConfigError(problems)
  return fields.build(Config, config)


def validate(config: ConfigDict, *, num_devices: int, num_granules: int | None = None,
             files: bool = True) -> Config:
  """Raises ConfigError listing every problem in `config` for a run on `num_devices` devices
  (in `num_granules` TPU slices or processes, when known: checks the mesh.dcn_* sizes);
  returns the typed config. `files=False` skips the checks of this machine's files (data
  paths, init_from), for a run that is loaded rather than trained."""
  if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < 1:
    raise ValueError(f'num_devices must be a positive int, got {num_devices!r}')
  c = typed(config)
  problems, sizes_ok = fields.value_problems(c)
  if files:
    problems += fields.file_problems(c)
  if sizes_ok:  # the checks below divide by the sizes
    problems += cross_problems(c, num_devices, num_granules, files=files)
  if problems:
    raise ConfigError(problems)
  return c


def resolve(config: ConfigDict, *, num_devices: int, num_granules: int | None = None,
            files: bool = True) -> ConfigDict:
  """Returns a validated copy with derived values filled in.

  `model.max_len=0` becomes `data.seq_len`; a mesh size of -1 becomes the devices (or, for
  mesh.dcn_*, the slices/processes) the other mesh axes leave. `model.vocab_size=0` stays:
  the tokenizer fills it later.
  """
  c = validate(config, num_devices=num_devices, num_granules=num_granules, files=files)
  out = ConfigDict(config.to_dict())  # a plain copy: FieldReferences resolved, never frozen
  if out.model.max_len == 0:
    out.model.max_len = out.data.seq_len
  ici, dcn, _ = axes.solve(c.mesh.ici, c.mesh.dcn, num_devices, num_granules)
  for a in axes.MESH_AXES:
    out.mesh[a], out.mesh[f'dcn_{a}'] = ici[a], dcn[a]
  validate(out, num_devices=num_devices, num_granules=num_granules, files=files)
  return out


def cross_problems(c: Config, num_devices: int, num_granules: int | None = None, *,
                   files: bool = True) -> list[str]:
  return [*_model_data(c, files), *dispatch_multiple('checkpoint.every', c.checkpoint.every,
                                                     c.train.steps_per_dispatch),
          *_mesh(c, num_devices, num_granules), *_moe(c), *_tasks(c)]


def _model_data(c: Config, files: bool) -> Iterator[str]:
  m, t = c.model, c.data.tokenizer
  if m.position == 'learned' and 0 < m.max_len < c.data.seq_len:
    yield (f'model.max_len={m.max_len} is shorter than data.seq_len={c.data.seq_len}: the '
           'learned position table would not cover a training row; raise it or set 0 '
           '(= data.seq_len).')
  if m.vocab_size and t.kind == 'sentencepiece' and m.vocab_size < t.vocab_size:
    yield (f'model.vocab_size={m.vocab_size} is smaller than data.tokenizer.vocab_size='
           f'{t.vocab_size}; token ids would overflow the embedding. Set 0 to take the '
           'tokenizer size.')
  if files and m.vocab_size and t.kind == 'hf' and not any(t.file_problems()):
    try:
      n = tokenizers.Tokenizer.from_file(t.hf_file).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # the tokenizers library raises its own Exception type
      yield (f'data.tokenizer.path={t.path!r}: {t.hf_file} does not load as a Hugging Face '
             f'tokenizer: {e}')
      return
    if m.vocab_size < n:
      yield (f'model.vocab_size={m.vocab_size} is smaller than the {n} ids of the tokenizer in '
             f'data.tokenizer.path={t.path!r}; token ids would overflow the embedding. Set 0 '
             'to take the tokenizer size.')


def _moe(c: Config) -> Iterator[str]:
  moe, mixture = c.model.moe, len(c.data.mixture)
  e = moe.num_experts
  if not e:
    return
  if moe.routing != 'learned':
    if not mixture:
      yield (f"model.moe.routing={moe.routing!r} routes each token by its data.mixture domain, "
             'but data.mixture is empty, so every token would go to the experts of domain 0; '
             "set data.mixture to the (name, source, weight) domains or use "
             "model.moe.routing='learned'.")
    elif moe.num_domains >= 1 and mixture != moe.num_domains:
      yield (f'model.moe.num_domains={moe.num_domains} but data.mixture has {mixture} domains; '
             f'set model.moe.num_domains={mixture}.')
  ep = c.mesh.expert
  if ep > 1 and e % ep:
    yield (f'mesh.expert={ep} does not divide model.moe.num_experts={e}; expert parallelism '
           'places num_experts / mesh.expert experts on each device.')


def _tasks(c: Config) -> Iterator[str]:
  """Tasks, data formats, encoder/decoder, LoRA and init_from (docs/finetuning.md)."""
  task, fmt, m = c.train.task, c.data.format, c.model
  if task in TASK_FORMATS and TASK_FORMATS[task] != fmt:
    yield (f"train.task={task!r} reads data.format={TASK_FORMATS[task]!r} records, but "
           f'data.format={fmt!r}; set --config.data.format={TASK_FORMATS[task]}.')
  if task == 'classify' and m.num_classes < 1:
    yield ("train.task='classify' needs a classification head: set model.num_classes to the "
           'number of labels.')
  if task == 'mlm' and m.causal:
    yield "train.task='mlm' trains a bidirectional encoder; set --config.model.causal=False."
  if task in ('dpo', 'distill') and not m.causal:
    yield (f'train.task={task!r} scores next-token log-probabilities, which a bidirectional '
           'model (model.causal=False) cannot give; set model.causal=True.')
  if task == 'distill' and not c.train.distill.teacher:
    yield ("train.task='distill' needs a teacher: set train.distill.teacher to the workdir of "
           'a trained run with the same tokenizer.')
  if (task == 'dpo' and c.train.dpo.loss in REFERENCE_FREE_LOSSES
      and c.train.dpo.reference != 'model'):
    yield (f"train.dpo.loss={c.train.dpo.loss!r} is reference-free; train.dpo.reference="
           f"{c.train.dpo.reference!r} would compute reference log-probabilities it never uses."
           " Leave train.dpo.reference='model'.")
  if task == 'dpo' and m.moe.num_experts:
    yield ("train.task='dpo' does not add the MoE load-balancing losses; use a dense model "
           '(model.moe.num_experts=0).')
  if task in ('lm', 'sft') and not m.causal:
    yield (f'train.task={task!r} predicts the next token, which a bidirectional model '
           '(model.causal=False) can see; set model.causal=True or train.task=mlm/classify.')
  lora = c.lora
  if lora.rank > 0 and m.moe.num_experts > 0 and {'mlp_in', 'mlp_out'} & set(lora.targets):
    yield ('lora.targets has mlp_in/mlp_out but model.moe.num_experts > 0: MoE layers have no '
           f'single MLP to adapt; use lora.targets={LORA_TARGETS[:2]}.')
  if c.init_from_opt_state and lora.rank > 0:
    yield ("init_from_opt_state=True with lora.rank > 0: the LoRA optimizer state has another "
           "shape than the full model's; leave init_from_opt_state=False.")
  if c.optimizer.name == 'muon' and lora.rank > 0:
    yield ("optimizer.name='muon' with lora.rank > 0: Muon updates the full weight matrices, "
           "LoRA trains only adapters; use optimizer.name='adamw' for LoRA.")


def _mesh(c: Config, num_devices: int, num_granules: int | None) -> Iterator[str]:
  if any(axes.size_problems(c.mesh.ici, c.mesh.dcn)):
    return  # reported with the mesh section
  ici, dcn, problems = axes.solve(c.mesh.ici, c.mesh.dcn, num_devices, num_granules)
  if problems:
    yield from problems
    return
  if c.mesh.preset not in presets.PRESETS:
    return  # reported with the other choices
  rules = c.mesh.logical_rules()
  total = {a: ici[a] * dcn[a] for a in axes.MESH_AXES}

  def expr(names: Sequence[str]) -> str:
    """'mesh.tensor=4', or 'mesh.data*mesh.fsdp = 2*4 = 8' for several factors."""
    factors = [f for a in names for f in ((f'mesh.{a}', ici[a]), (f'mesh.dcn_{a}', dcn[a]))
               if not f[0].startswith('mesh.dcn_') or f[1] != 1]
    if len(factors) == 1:
      return f'{factors[0][0]}={factors[0][1]}'
    return (f"{'*'.join(k for k, _ in factors)} = {'*'.join(str(v) for _, v in factors)} = "
            f'{math.prod(v for _, v in factors)}')

  preset = f'mesh.preset={c.mesh.preset!r}'
  m = c.model
  for name, key, v in (('heads', 'model.num_heads', m.num_heads),
                       ('kv_heads', 'model.num_kv_heads', m.num_kv_heads),
                       ('mlp', 'model.mlp_dim', m.mlp_dim), ('embed', 'model.width', m.width),
                       ('vocab', 'model.vocab_size', m.vocab_size)):
    split = [a for a in rules.get(name, ()) if total[a] > 1]
    n = math.prod(total[a] for a in split)
    if v and split and v % n:
      yield (f'{expr(split)} does not divide {key}={v}; {preset} splits the {name!r} axis over '
             f'{tuple(split)}. Choose mesh sizes that divide it (or another mesh.preset).')
  used = {a for mesh_axes in rules.values() for a in mesh_axes}
  for a in axes.MESH_AXES:
    if total[a] > 1 and a not in used:
      yield (f'{expr([a])}, but {preset} maps no logical axis to {a!r}: its devices would all '
             f'do the same work. Set mesh.{a}=1 (and mesh.dcn_{a}=1), or pick a preset that '
             f'uses {a!r} (fsdp_tensor uses every axis).')
  batch_axes = tuple(rules.get('batch', ()))
  for a in axes.MESH_AXES:
    if dcn[a] > 1 and a not in batch_axes:
      yield (f'mesh.dcn_{a}={dcn[a]} puts slices/processes on {a!r}, which {preset} does not '
             f'split the batch over {batch_axes}; each slice/process reads its own rows, so put '
             'the DCN sizes on batch axes (e.g. mesh.dcn_data or mesh.dcn_fsdp).')
  dp = math.prod(total[a] for a in batch_axes)
  b, k = c.train.batch_size, c.train.grad_accum
  if b % k == 0 and (b // k) % dp:
    what = (f'train.batch_size={b}' if k == 1 else
            f'train.batch_size/train.grad_accum = {b}/{k} = {b // k} rows per microbatch')
    yield (f'{what} is not divisible by {expr(batch_axes)}, the devices a batch is split over; '
           f'use a batch_size that is a multiple of {dp * k}.')
