"""Checks an experiment config once at start-up, fills its derived values, and (de)serializes it.

A config FILE is checked here: unknown or missing keys (against `configs/default.py`),
wrong types, values out of range and fields that disagree with each other or with the
device count. Every problem names the dotted key and what would fix it, and all problems
are reported at once. (`--config.x=...` overrides are type-checked by ml_collections.)
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

from lm.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

# The `mesh.*` size fields, in mesh order (as lm.parallel.MESH_AXES; each also has mesh.dcn_*).
MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')
MIN_SENTENCEPIECE_VOCAB = 256  # room for the special tokens and every character of a corpus

ENUMS: dict[str, tuple[str, ...]] = {
    'data.source': ('stdlib', 'text', 'tfds'),
    'data.split': ('document', 'tail'),
    'data.tokenizer.kind': ('sentencepiece', 'byte', 'char', 'hf'),
    'data.tokenizer.model_type': ('bpe', 'unigram'),
    'model.norm': ('rmsnorm', 'layernorm'),
    'model.mlp': ('swiglu', 'gelu'),
    'model.position': ('rope', 'learned'),
    'model.remat': ('none', 'full', 'dots'),
    'model.attention': ('xla', 'cudnn', 'auto'),
    'model.param_dtype': ('float32', 'bfloat16'),
    'model.dtype': ('float32', 'bfloat16'),
    'optimizer.schedule': ('cosine', 'linear', 'constant'),
    'model.moe.routing': ('learned', 'domain', 'domain+learned'),
    'mesh.preset': ('fsdp_tensor', 'data', 'fsdp', 'tensor'),  # lm/parallel/presets.py
    'data.format': ('text', 'sft', 'classify'),
    'train.task': ('lm', 'sft', 'mlm', 'classify'),
}

POSITIVE_INTS = (
    'data.seq_len', 'data.tokenizer.max_train_chars',
    'model.num_layers', 'model.width', 'model.num_heads', 'model.num_kv_heads', 'model.mlp_dim',
    'train.steps', 'train.batch_size', 'train.grad_accum', 'train.steps_per_dispatch',
    'train.log_every', 'train.eval_every', 'train.eval_batches',
    'checkpoint.every', 'checkpoint.keep',
)
NON_NEGATIVE_INTS = (
    'data.max_docs', 'model.vocab_size', 'model.max_len', 'optimizer.warmup_steps',
    'train.sample_tokens', 'train.sample_prompt_tokens',
    'model.moe.num_experts', 'model.moe.expert_mlp_dim', 'model.moe.num_domains',
    'model.num_classes', 'lora.rank',
)
POSITIVE_FLOATS = (
    'model.norm_eps', 'model.rope_theta', 'model.init_std', 'optimizer.lr', 'optimizer.eps',
    'lora.alpha',
)
NON_NEGATIVE_FLOATS = (
    'optimizer.min_lr', 'optimizer.weight_decay', 'optimizer.grad_clip',
    'train.sample_temperature',
    'model.moe.capacity_factor', 'model.moe.aux_loss_weight', 'model.moe.z_loss_weight',
)
# key -> (low, high, low inclusive, description of the allowed range)
RANGES: dict[str, tuple[float, float, bool, str]] = {
    'data.val_fraction': (0.0, 1.0, False, '0 < value < 1'),
    'model.dropout': (0.0, 1.0, True, '0 <= value < 1'),
    'optimizer.b1': (0.0, 1.0, True, '0 <= value < 1'),
    'optimizer.b2': (0.0, 1.0, True, '0 <= value < 1'),
    'lora.dropout': (0.0, 1.0, True, '0 <= value < 1'),
    'train.mlm_rate': (0.0, 1.0, False, '0 < value < 1'),
}


# ---- public API -------------------------------------------------------------------------


def default_config() -> ConfigDict:
  """The base config every experiment derives from (`configs/default.py`)."""
  try:
    from configs import default  # the repository's configs package, installed with lm
  except ModuleNotFoundError:  # lm imported from a checkout that is not on sys.path
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'configs', 'default.py')
    spec = importlib.util.spec_from_file_location('_lm_default_config', path)
    if spec is None or spec.loader is None or not os.path.exists(path):
      raise
    default = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(default)
  return default.get_config()


def from_flag(holder) -> ConfigDict:
  """The config of an `ml_collections.config_flags` --config flag; a file that does not
  load is a ConfigError naming it (ml_collections defers that error to first use)."""
  try:
    config = holder.value
    config.keys()  # a config that failed to load raises here, on first use
    return config
  except OSError as e:
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
      cause = cause.__cause__ or cause.__context__
    reason = ' '.join(str(cause).split())
    raise ConfigError(f'--config: cannot load the config file ({reason}); give a '
                      'Python file with get_config(), e.g. --config=configs/default.py') from e


def check_known_keys(config: ConfigDict, base: ConfigDict | None = None) -> None:
  """Raises ConfigError for keys that `base` (default: configs/default.py) lacks or has extra."""
  problems = _key_problems(config, base if base is not None else default_config())
  if problems:
    raise ConfigError(problems)


def validate(config: ConfigDict, *, num_devices: int, num_granules: int | None = None) -> None:
  """Raises ConfigError listing every problem in `config` for a run on `num_devices` devices
  (in `num_granules` TPU slices or processes, when known: checks the mesh.dcn_* sizes)."""
  if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < 1:
    raise ValueError(f'num_devices must be a positive int, got {num_devices!r}')
  base = default_config()
  problems = _key_problems(config, base) + _type_problems(config, base)
  if problems:  # value checks assume the keys exist and have the right types
    raise ConfigError(problems)
  problems = _value_problems(config, num_devices, num_granules)
  if problems:
    raise ConfigError(problems)


def resolve(config: ConfigDict, *, num_devices: int,
            num_granules: int | None = None) -> ConfigDict:
  """Returns a validated copy with derived values filled in.

  `model.max_len=0` becomes `data.seq_len`; a mesh size of -1 becomes the devices (or, for
  mesh.dcn_*, the slices/processes) the other mesh axes leave. `model.vocab_size=0` stays:
  the tokenizer fills it later.
  """
  from lm.parallel import presets  # imports jax; lm.config itself must not

  validate(config, num_devices=num_devices, num_granules=num_granules)
  out = ConfigDict(config.to_dict())  # a plain copy: FieldReferences resolved, never frozen
  if out.model.max_len == 0:
    out.model.max_len = out.data.seq_len
  ici, dcn = presets.mesh_sizes(out.mesh, num_devices, num_granules)
  for a in MESH_AXES:
    out.mesh[a], out.mesh[f'dcn_{a}'] = ici[a], dcn[a]
  validate(out, num_devices=num_devices, num_granules=num_granules)
  return out


def fill_new_keys(config: ConfigDict) -> list[str]:
  """Adds, in place, the keys configs/default.py has and a saved `config` lacks (a run
  written by an older lm), each with its default, which keeps the older behaviour; returns
  the dotted keys it added."""
  added: list[str] = []

  def walk(saved: ConfigDict, default: ConfigDict, prefix: str) -> None:
    for key in default.keys():
      value = default[key]
      if key not in saved:
        saved[key] = ConfigDict(value.to_dict()) if isinstance(value, ConfigDict) else value
        added.append(prefix + key)
      elif isinstance(value, ConfigDict) and isinstance(saved[key], ConfigDict):
        walk(saved[key], value, f'{prefix}{key}.')

  walk(config, default_config(), '')
  return added


def to_json(config: ConfigDict) -> str:
  """The config as indented JSON (tuples become lists; `from_json` turns them back)."""
  return json.dumps(config.to_dict(), indent=2)


def from_json(s: str, source: str = 'config JSON') -> ConfigDict:
  """Inverse of `to_json`: JSON lists come back as tuples, as configs/default.py writes them;
  `source` (a file name) is named in errors."""
  try:
    d = json.loads(s)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{source} does not parse ({e}); was it written by '
                      'lm.config.to_json?') from e
  if not isinstance(d, dict):
    raise ConfigError(f'{source} must hold an object, got {type(d).__name__}')
  return ConfigDict(_lists_to_tuples(d))


# ---- keys and types ---------------------------------------------------------------------


def _leaves(c: ConfigDict, prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted key, value) for every leaf; nested ConfigDicts are walked, not yielded."""
  for k, v in c.items():
    key = f'{prefix}{k}'
    if isinstance(v, ConfigDict):
      yield from _leaves(v, key + '.')
    else:
      yield key, v


def _all_keys(c: ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted key, sections included ('model' and 'model.width')."""
  out = []
  for k, v in c.items():
    out.append(f'{prefix}{k}')
    if isinstance(v, ConfigDict):
      out += _all_keys(v, f'{prefix}{k}.')
  return out


def _key_problems(config: ConfigDict, base: ConfigDict) -> list[str]:
  known = _all_keys(base)
  known_set = set(known)
  have = _all_keys(config)
  have_sections = {k for k in have if isinstance(_get(config, k), ConfigDict)}
  have_set = set(have)
  problems = []
  for key in have:
    parent = key.rpartition('.')[0]
    if key in known_set or (parent and parent not in known_set):
      continue  # known, or inside an unknown section already reported
    siblings = [k for k in known if k.rpartition('.')[0] == parent]
    close = _closest(key, siblings) or _closest(key, known)  # same section first, then anywhere
    hint = f"did you mean '{close}'?" if close else (
        f"known keys here: {', '.join(k.rpartition('.')[2] for k in siblings)}.")
    problems.append(f"unknown key '{key}' (not in configs/default.py); {hint} "
                    'New settings must be added to configs/default.py first.')
  for key in known:
    parent = key.rpartition('.')[0]
    if key not in have_set and (not parent or parent in have_sections):
      problems.append(f"missing key '{key}'; start the config from configs.default.get_config() "
                      'and override fields instead of building a new ConfigDict.')
  return problems


def _closest(key: str, candidates: list[str]) -> str | None:
  """The candidate whose last name part is most like `key`'s (difflib), if any is close."""
  by_leaf: dict[str, str] = {}
  for k in candidates:
    by_leaf.setdefault(k.rpartition('.')[2], k)
  match = difflib.get_close_matches(key.rpartition('.')[2], list(by_leaf), n=1, cutoff=0.6)
  return by_leaf[match[0]] if match else None


def _type_ok(value: Any, like: Any) -> bool:
  if isinstance(like, bool):
    return isinstance(value, bool)
  if isinstance(like, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(like, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(like, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(like))


def _type_problems(config: ConfigDict, base: ConfigDict) -> list[str]:
  base_leaves = dict(_leaves(base))
  base_sections = set(_all_keys(base)) - set(base_leaves)
  problems = []
  for key, value in _leaves(config):
    if key in base_sections:
      problems.append(f"'{key}' must be a section (ConfigDict) as in configs/default.py, "
                      f'got {type(value).__name__} {value!r}')
    elif key in base_leaves and not _type_ok(value, base_leaves[key]):
      like = base_leaves[key]
      want = 'int or float' if isinstance(like, float) else type(like).__name__
      problems.append(f'{key}={value!r} has type {type(value).__name__}; it must be {want} '
                      f'(the default is {like!r}).')
  for key, like in base_leaves.items():
    if isinstance(_get(config, key), ConfigDict):
      problems.append(f"'{key}' must be a value like the default {like!r}, "
                      'not a section.')
  return problems


def _get(c: ConfigDict, key: str) -> Any:
  """The value at a dotted key, or None where the path does not exist."""
  node: Any = c
  for part in key.split('.'):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


# ---- values -----------------------------------------------------------------------------


def _value_problems(c: ConfigDict, num_devices: int, num_granules: int | None = None
                    ) -> list[str]:
  problems: list[str] = []
  add = problems.append

  def get(key: str) -> Any:
    return _get(c, key)

  for key, allowed in ENUMS.items():
    if get(key) not in allowed:
      close = difflib.get_close_matches(str(get(key)), allowed, n=1)
      hint = f" (did you mean '{close[0]}'?)" if close else ''
      add(f'{key}={get(key)!r} is not one of {", ".join(map(repr, allowed))}{hint}.')
  for key in POSITIVE_INTS:
    if get(key) < 1:
      add(f'{key}={get(key)} must be a positive integer.')
  divisors_ok = all(get(k) >= 1 for k in POSITIVE_INTS)
  for key in NON_NEGATIVE_INTS:
    if get(key) < 0:
      note = {'model.vocab_size': ' (0: the tokenizer size)', 'model.max_len': ' (0: data.seq_len)',
              'data.max_docs': ' (0: all documents)'}.get(key, '')
      add(f'{key}={get(key)} must be >= 0{note}.')
  for key in POSITIVE_FLOATS:
    if not get(key) > 0:
      add(f'{key}={get(key)} must be > 0.')
  for key in NON_NEGATIVE_FLOATS:
    if not get(key) >= 0:
      note = ' (0 disables clipping)' if key == 'optimizer.grad_clip' else ''
      add(f'{key}={get(key)} must be >= 0{note}.')
  for key, (lo, hi, lo_inclusive, text) in RANGES.items():
    v = get(key)
    if not ((lo <= v if lo_inclusive else lo < v) and v < hi):
      add(f'{key}={v} is out of range; it must satisfy {text}.')
  if not divisors_ok:
    return problems  # the cross-field checks below divide by these values

  _data_problems(c, add)
  _model_problems(c, add)
  _train_problems(c, add)
  _mesh_problems(c, num_devices, add, num_granules)
  _moe_problems(c, add)
  _mixture_problems(c, add)
  _finetune_problems(c, add)
  return problems


def _moe_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  moe = c.model.moe
  e = moe.num_experts
  if moe.top_k not in (1, 2):
    add(f'model.moe.top_k={moe.top_k} must be 1 or 2 (experts each token is routed to).')
  if moe.every < 1:
    add(f'model.moe.every={moe.every} must be >= 1 (1: every layer is MoE, 2: every other).')
  elif e and c.model.num_layers % moe.every:
    add(f'model.num_layers={c.model.num_layers} is not divisible by model.moe.every='
        f'{moe.every}; layers are scanned in groups of `every` (one MoE layer per group).')
  if not e:
    return
  if moe.routing != 'domain' and moe.top_k > e:
    add(f'model.moe.top_k={moe.top_k} exceeds model.moe.num_experts={e}.')
  if moe.routing != 'learned':
    d = moe.num_domains
    mixture = len(c.data.mixture)
    if d < 1:
      add(f"model.moe.routing='{moe.routing}' needs model.moe.num_domains >= 1 (the number of "
          'data.mixture entries).')
    elif e % d:
      add(f'model.moe.num_experts={e} is not divisible by model.moe.num_domains={d}; each '
          'domain owns num_experts / num_domains experts.')
    elif moe.routing == 'domain+learned' and e // d < moe.top_k:
      add(f'model.moe.top_k={moe.top_k} exceeds the {e // d} experts each domain owns '
          f'(num_experts / num_domains = {e}/{d}); lower top_k or add experts.')
    if d >= 1 and mixture and mixture != d:
      add(f'model.moe.num_domains={d} but data.mixture has {mixture} domains; set '
          f'model.moe.num_domains={mixture}.')
  ep = c.mesh.expert
  if ep > 1 and e % ep:
    add(f'mesh.expert={ep} does not divide model.moe.num_experts={e}; expert parallelism '
        'places num_experts / mesh.expert experts on each device.')


def _mixture_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  names = set()
  for i, entry in enumerate(c.data.mixture):
    where = f'data.mixture[{i}]'
    if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], str)
            and isinstance(entry[1], str) and isinstance(entry[2], (int, float))
            and not isinstance(entry[2], bool)):
      add(f"{where}={entry!r} must be a triple (domain name, source, weight), e.g. "
          "('code', 'stdlib:code', 1.0).")
      continue
    name, source, weight = entry
    if not name or name in names:
      add(f'{where} has an empty or repeated domain name {name!r}; give each domain its own.')
    names.add(name)
    if not weight >= 0:
      add(f'{where} has weight {weight}; weights must be >= 0 (0: evaluated, not trained on).')
    if source.startswith('stdlib'):
      if source not in ('stdlib', 'stdlib:code', 'stdlib:prose'):
        add(f"{where} source {source!r} is not one of 'stdlib', 'stdlib:code', 'stdlib:prose' "
            'or a text file path.')
    elif not glob.glob(os.path.expanduser(source)):
      add(f'{where} source {source!r} matches no file; give a .txt/.jsonl file, directory or '
          "glob that exists, or 'stdlib:code' / 'stdlib:prose'.")
  weights = [e[2] for e in c.data.mixture if isinstance(e, (tuple, list)) and len(e) == 3
             and isinstance(e[2], (int, float))]
  if weights and not sum(weights) > 0:
    add('data.mixture weights are all 0; give at least one domain a positive weight.')


def _data_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  d = c.data
  if d.source == 'text':
    if not d.path:
      add("data.path is empty but data.source='text' needs one; give a .txt/.jsonl file, "
          "a directory or a glob (e.g. --config.data.path='corpus/*.txt').")
    elif not glob.glob(os.path.expanduser(d.path)):
      add(f'data.path={d.path!r} matches no file; give a .txt/.jsonl file, a directory or a '
          'glob that exists on this machine.')
  if d.source == 'tfds' and not d.tfds_name:
    add("data.tfds_name is empty but data.source='tfds' needs a TFDS dataset name "
        "(e.g. --config.data.tfds_name=tiny_shakespeare).")
  if d.source == 'tfds' and not d.tfds_split:
    add("data.tfds_split is empty but data.source='tfds' reads documents from it; "
        "use e.g. 'train' or 'train[:10%]'.")
  t = d.tokenizer
  if t.kind == 'sentencepiece' and t.vocab_size < MIN_SENTENCEPIECE_VOCAB:
    add(f'data.tokenizer.vocab_size={t.vocab_size} is too small for sentencepiece; use >= '
        f"{MIN_SENTENCEPIECE_VOCAB}, or data.tokenizer.kind='byte' for a tiny vocabulary.")
  if t.kind == 'hf' and not os.path.isfile(os.path.join(os.path.expanduser(t.path),
                                                         'tokenizer.json')):
    add(f"data.tokenizer.path={t.path!r} holds no tokenizer.json, which data.tokenizer.kind="
        "'hf' needs; give the directory of a Hugging Face tokenizer (python -m lm.convert "
        'from-hf sets it up).')


def _model_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  m = c.model
  if m.width % m.num_heads:
    add(f'model.width={m.width} is not divisible by model.num_heads={m.num_heads}; '
        'change one so that width / num_heads is the head dimension.')
  elif m.position == 'rope' and (m.width // m.num_heads) % 2:
    add(f'model.position=rope needs an even head dimension, but model.width/model.num_heads = '
        f'{m.width}/{m.num_heads} = {m.width // m.num_heads}; change model.width or '
        'model.num_heads.')
  if m.num_heads % m.num_kv_heads:
    add(f'model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}; '
        'each key/value head must serve a whole group of query heads.')
  if m.position == 'learned' and 0 < m.max_len < c.data.seq_len:
    add(f'model.max_len={m.max_len} is shorter than data.seq_len={c.data.seq_len}: the learned '
        'position table would not cover a training row; raise it or set 0 (= data.seq_len).')
  t = c.data.tokenizer
  if m.vocab_size and t.kind == 'sentencepiece' and m.vocab_size < t.vocab_size:
    add(f'model.vocab_size={m.vocab_size} is smaller than data.tokenizer.vocab_size='
        f'{t.vocab_size}; token ids would overflow the embedding. Set 0 to take the '
        'tokenizer size.')
  if m.vocab_size and t.kind == 'hf' and os.path.isfile(
      os.path.join(os.path.expanduser(t.path), 'tokenizer.json')):
    from lm.data.tokenizers import hf  # only here: it loads the tokenizers library
    try:
      n = hf.vocab_size_of(os.path.expanduser(t.path))
    except ValueError as e:  # a tokenizer.json that does not load (DataError)
      add(f'data.tokenizer.path={t.path!r}: {e}')
      n = 0
    if m.vocab_size < n:
      add(f'model.vocab_size={m.vocab_size} is smaller than the {n} ids of the tokenizer in '
          f'data.tokenizer.path={t.path!r}; token ids would overflow the embedding. Set 0 to '
          'take the tokenizer size.')
  if c.optimizer.min_lr > c.optimizer.lr:
    add(f'optimizer.min_lr={c.optimizer.min_lr} is above optimizer.lr={c.optimizer.lr}; '
        'the schedule decays from lr to min_lr.')


def _train_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  t = c.train
  if t.batch_size % t.grad_accum:
    add(f'train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}; '
        'each microbatch must have the same number of rows.')
  k = t.steps_per_dispatch
  for key, v in (('train.log_every', t.log_every), ('train.eval_every', t.eval_every),
                 ('checkpoint.every', c.checkpoint.every)):
    if v % k:
      add(f'{key}={v} is not a multiple of train.steps_per_dispatch={k}: the loop only sees the '
          f'state between dispatches; use e.g. {key}={max(k, v // k * k)}.')


def _mesh_problems(c: ConfigDict, num_devices: int, add: Callable[[str], None],
                   num_granules: int | None = None) -> None:
  # lm.parallel imports jax: import it only here, so lm.config stays importable before jax.
  from lm.parallel import presets

  ici = {a: c.mesh[a] for a in MESH_AXES}
  dcn = {a: c.mesh[f'dcn_{a}'] for a in MESH_AXES}
  bad = False
  for sizes, prefix, what in ((ici, 'mesh.', 'devices'), (dcn, 'mesh.dcn_', 'slices/processes')):
    for a, s in sizes.items():
      if s != -1 and s < 1:
        add(f'{prefix}{a}={s} must be a positive size, or -1 to take the remaining {what}.')
        bad = True
    wild = [a for a, s in sizes.items() if s == -1]
    if len(wild) > 1:
      add(f"more than one mesh size is -1 ({', '.join(prefix + a for a in wild)}); at most one "
          f'axis can take the remaining {what}. Give the others explicit sizes.')
      bad = True
  rules_ok = _rules_problems(c.mesh.rules, add)
  if bad:
    return
  ici_wild = [a for a, s in ici.items() if s == -1]
  dcn_wild = [a for a, s in dcn.items() if s == -1]
  if ici_wild and dcn_wild:
    if num_granules is None:
      add(f'mesh.{ici_wild[0]}=-1 and mesh.dcn_{dcn_wild[0]}=-1: with no slice/process count '
          f'to go by, give mesh.dcn_{dcn_wild[0]} explicitly (the number of slices/processes).')
      return
    dcn_rest = math.prod(s for s in dcn.values() if s != -1)
    if num_granules % dcn_rest:
      add(f'mesh.dcn_{dcn_wild[0]}=-1 cannot take the remaining {num_granules} '
          f'slices/processes: the other mesh.dcn_* sizes multiply to {dcn_rest}.')
      return
    dcn[dcn_wild[0]] = num_granules // dcn_rest
    dcn_wild = []
  names = ', '.join([f'mesh.{a}={s}' for a, s in ici.items()]
                    + [f'mesh.dcn_{a}={s}' for a, s in dcn.items() if s != 1])
  rest = math.prod(s for s in [*ici.values(), *dcn.values()] if s != -1)
  wild = [f'mesh.{a}' for a in ici_wild] + [f'mesh.dcn_{a}' for a in dcn_wild]
  if wild:
    if num_devices % rest:
      add(f'{wild[0]}=-1 cannot take the remaining devices: {num_devices} devices are not '
          f'divisible by the product of the other mesh sizes ({names}: {rest}). Make that '
          f'product divide {num_devices}.')
      return
    for sizes, axes in ((ici, ici_wild), (dcn, dcn_wild)):
      for a in axes:
        sizes[a] = num_devices // rest
  elif rest != num_devices:
    product = '*'.join(str(s) for s in [*ici.values(), *(s for s in dcn.values() if s != 1)])
    add(f'the mesh has {product} = {rest} devices ({names}) but this run has {num_devices}; '
        f'make the product equal {num_devices}, e.g. --config.mesh.data=-1 to give the data '
        'axis the remaining devices.')
    return
  if num_granules is not None and math.prod(dcn.values()) not in (1, num_granules):
    add(f'the mesh.dcn_* sizes ({names}) split {math.prod(dcn.values())} slices/processes but '
        f'this run has {num_granules}; make their product {num_granules}, or 1 for one slice.')

  if c.mesh.preset not in presets.PRESETS:
    return  # reported with the other enum values
  rules = dict(presets.preset_rules(c.mesh.preset, c.mesh.rules if rules_ok else ()))
  total = {a: ici[a] * dcn[a] for a in MESH_AXES}

  def expr(axes: Sequence[str]) -> str:
    """'mesh.tensor=4', or 'mesh.data*mesh.fsdp = 2*4 = 8' for several factors."""
    factors = [f for a in axes for f in ((f'mesh.{a}', ici[a]), (f'mesh.dcn_{a}', dcn[a]))
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
    axes = [a for a in rules.get(name, ()) if total[a] > 1]
    n = math.prod(total[a] for a in axes)
    if v and axes and v % n:
      add(f'{expr(axes)} does not divide {key}={v}; {preset} splits the {name!r} axis over '
          f'{tuple(axes)}. Choose mesh sizes that divide it (or another mesh.preset).')
  used = {a for axes in rules.values() for a in axes}
  for a in MESH_AXES:
    if total[a] > 1 and a not in used:
      add(f'{expr([a])}, but {preset} maps no logical axis to {a!r}: its devices would all '
          f'do the same work. Set mesh.{a}=1 (and mesh.dcn_{a}=1), or pick a preset that uses '
          f'{a!r} (fsdp_tensor uses every axis).')
  batch_axes = tuple(rules.get('batch', ()))
  for a in MESH_AXES:
    if dcn[a] > 1 and a not in batch_axes:
      add(f'mesh.dcn_{a}={dcn[a]} puts slices/processes on {a!r}, which {preset} does not split '
          f'the batch over {batch_axes}; each slice/process reads its own rows, so put '
          'the DCN sizes on batch axes (e.g. mesh.dcn_data or mesh.dcn_fsdp).')
  dp = math.prod(total[a] for a in batch_axes)
  b, a = c.train.batch_size, c.train.grad_accum
  if b % a == 0 and (b // a) % dp:
    what = (f'train.batch_size={b}' if a == 1 else
            f'train.batch_size/train.grad_accum = {b}/{a} = {b // a} rows per microbatch')
    add(f'{what} is not divisible by {expr(batch_axes)}, the devices a batch is split over; '
        f'use a batch_size that is a multiple of {dp * a}.')


LORA_TARGETS = ('qkv', 'out', 'mlp_in', 'mlp_out')
# train.task -> the data.format it reads
TASK_FORMATS = {'lm': 'text', 'mlm': 'text', 'sft': 'sft', 'classify': 'classify'}


def _finetune_problems(c: ConfigDict, add: Callable[[str], None]) -> None:
  """Tasks, data formats, encoder/decoder, LoRA and init_from (docs/finetuning.md)."""
  task, fmt, m = c.train.task, c.data.format, c.model
  if task in TASK_FORMATS and TASK_FORMATS[task] != fmt:
    add(f"train.task={task!r} reads data.format={TASK_FORMATS[task]!r} records, but "
        f"data.format={fmt!r}; set --config.data.format={TASK_FORMATS[task]}.")
  if fmt != 'text' and c.data.source == 'tfds':
    add(f"data.format={fmt!r} reads JSONL records (data.source='text') or generates them "
        "(data.source='stdlib'); data.source='tfds' gives only plain documents.")
  if task == 'classify' and m.num_classes < 1:
    add("train.task='classify' needs a classification head: set model.num_classes to the "
        'number of labels.')
  if task == 'mlm' and m.causal:
    add("train.task='mlm' trains a bidirectional encoder; set --config.model.causal=False.")
  if task in ('lm', 'sft') and not m.causal:
    add(f"train.task={task!r} predicts the next token, which a bidirectional model "
        '(model.causal=False) can see; set model.causal=True or train.task=mlm/classify.')
  targets = c.lora.targets
  bad = [t for t in targets if t not in LORA_TARGETS]
  if bad:
    add(f'lora.targets has unknown projections {bad}; choose from {LORA_TARGETS}.')
  if c.lora.rank > 0 and c.model.moe.num_experts > 0 and {'mlp_in', 'mlp_out'} & set(targets):
    add('lora.targets has mlp_in/mlp_out but model.moe.num_experts > 0: MoE layers have no '
        "single MLP to adapt; use lora.targets=('qkv', 'out').")
  if c.lora.rank > 0 and not targets:
    add('lora.rank > 0 but lora.targets is empty; name the projections that get adapters, '
        f'e.g. {LORA_TARGETS[:2]}.')
  if c.init_from and not os.path.isdir(os.path.expanduser(c.init_from)):
    add(f'init_from={c.init_from!r} is not a directory; give a training workdir or one of its '
        'checkpoints/<step> directories.')
  if c.init_from_opt_state and not c.init_from:
    add('init_from_opt_state=True needs init_from (the run whose optimizer state to take).')
  if c.init_from_opt_state and c.lora.rank > 0:
    add('init_from_opt_state=True with lora.rank > 0: the LoRA optimizer state has another '
        'shape than the full model\'s; leave init_from_opt_state=False.')


def _rules_problems(rules: Any, add: Callable[[str], None]) -> bool:
  """Checks `mesh.rules`; True when it has no problem."""
  problems: list[str] = []
  add_all, add = add, problems.append
  seen: set[str] = set()
  for i, rule in enumerate(rules):
    where = f'mesh.rules[{i}]'
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      add(f"{where}={rule!r} must be a pair (logical axis name, mesh axes), e.g. "
          "('embed', ('fsdp',)).")
      continue
    name, axes = rule
    if name in seen:
      add(f"{where} repeats the logical axis '{name}'; give each logical axis one rule.")
    seen.add(name)
    if axes is None or isinstance(axes, str):
      axes = (axes,) if axes else ()
    if not isinstance(axes, (tuple, list)) or not all(isinstance(a, str) for a in axes):
      add(f'{where} maps {name!r} to {rule[1]!r}; mesh axes must be a tuple of names from '
          f"{MESH_AXES} ('' or () for replicated).")
      continue
    unknown = [a for a in axes if a and a not in MESH_AXES]
    if unknown:
      add(f"{where} maps '{name}' to unknown mesh axes {unknown}; use names from {MESH_AXES}.")
    named = [a for a in axes if a]
    if len(set(named)) != len(named):
      add(f"{where} uses a mesh axis twice for '{name}': {tuple(axes)}.")
  for p in problems:
    add_all(p)
  return not problems


def _lists_to_tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x
