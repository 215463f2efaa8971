"""Hugging Face weights in and out (GPT-2 and LLaMA families), with no torch needed.

    python -m lm.convert from-hf --hf_dir=DIR --workdir=OUT [--config=configs/X.py --config.a=v]
    python -m lm.convert to-hf --workdir=DIR --hf_dir=OUT [--step=N]

from-hf reads DIR's config.json + model.safetensors (or a sharded model.safetensors.index.json)
and writes a normal workdir: config.json (--config, default configs/default.py, with the
model section from DIR), config.py (the same config as a --config file), and checkpoint 0
holding the weights and a fresh optimizer state, so `python -m lm.main --config=OUT/config.py
--workdir=OUT` fine-tunes it and lm.generate / lm.api.load run it. With a tokenizer.json in
DIR the data pipeline uses that tokenizer (data.tokenizer.kind='hf', copied to OUT/tokenizer).

to-hf writes config.json + model.safetensors (+ the HF tokenizer files if the run used one)
that transformers.AutoModelForCausalLM.from_pretrained loads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from lm import config as config_lib

REPO_ROOT = Path(__file__).resolve().parent.parent
HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
HF_INDEX = 'model.safetensors.index.json'
TOKENIZER_DIR = 'tokenizer'  # under an imported workdir: the HF tokenizer files
CONFIG_PY = 'config.py'
COMMANDS = ('from-hf', 'to-hf')

Log = Callable[[str], None]


class UserError(ValueError):
  """A problem with the command line or the files given; printed as one line."""


# ---- reading and writing HF directories --------------------------------------------------


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
  """The config.json of an HF model directory, checked to exist and parse."""
  path = Path(hf_dir) / HF_CONFIG
  if not Path(hf_dir).is_dir():
    raise UserError(f'--hf_dir={os.fspath(hf_dir)} is not a directory; give the directory a '
                    'Hugging Face model was saved to (save_pretrained).')
  if not path.is_file():
    raise UserError(f'{path} not found; a Hugging Face model directory holds config.json and '
                    f'{HF_WEIGHTS}.')
  try:
    config = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON ({e}).') from e
  if not isinstance(config, dict):
    raise UserError(f'{path} must hold a JSON object, got {type(config).__name__}.')
  return config


def read_hf_tensors(hf_dir: str | os.PathLike) -> tuple[dict[str, Any], str]:
  """({name: numpy array}, a description of the files) of an HF model's safetensors."""
  from safetensors.numpy import load_file

  hf_dir = Path(hf_dir)
  single, index = hf_dir / HF_WEIGHTS, hf_dir / HF_INDEX
  if single.is_file():
    return load_file(single), str(single)
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text(encoding='utf-8'))['weight_map']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise UserError(f'{index} is not a safetensors index (no "weight_map": {e}).') from e
    tensors: dict[str, Any] = {}
    for name in sorted(set(weight_map.values())):
      if not (hf_dir / name).is_file():
        raise UserError(f'{hf_dir / name}, named in {index}, not found.')
      tensors.update(load_file(hf_dir / name))
    return tensors, f'the shards of {index}'
  others = sorted(p.name for p in hf_dir.glob('*.bin')) + sorted(p.name for p in
                                                                  hf_dir.glob('*.pt'))
  hint = (f' ({", ".join(others)} are torch pickles: load the model in transformers and '
          'save_pretrained(..., safe_serialization=True) to get safetensors)' if others else '')
  raise UserError(f'{hf_dir} holds no {HF_WEIGHTS} or {HF_INDEX}{hint}.')


def _check_new_dir(path: Path, names: tuple[str, ...], flag: str) -> None:
  clash = [n for n in names if (path / n).exists()]
  if clash:
    raise UserError(f'{flag}={path} already holds {", ".join(clash)}; refusing to overwrite '
                    'them. Pick another directory or delete them.')


# ---- from-hf ------------------------------------------------------------------------------


def _training_fields(model_section: config_lib.ConfigDict) -> dict[str, Any]:
  """The ModelConfig fields of `config.model` that are training choices, not architecture."""
  import dataclasses

  from lm.model import ModelConfig
  from lm.model.hf import ARCHITECTURE_FIELDS
  # moe is architecture too (GPT-2 and LLaMA are dense): the imported model has none.
  names = {f.name for f in dataclasses.fields(ModelConfig)} - set(ARCHITECTURE_FIELDS) - {'moe'}
  return {k: v for k, v in model_section.to_dict().items() if k in names}


def import_hf(hf_dir: str | os.PathLike, workdir: str | os.PathLike,
              config: config_lib.ConfigDict | None = None, *, log: Log = print
              ) -> config_lib.ConfigDict:
  """Writes `workdir` from the HF model in `hf_dir`; returns its (resolved) config.

  `config` (default: configs/default.py) gives everything but the model architecture:
  data, optimizer, training settings, and the model's dtype/remat/dropout choices.
  """
  import jax
  import jax.numpy as jnp

  from lm.checkpoint import Checkpointer
  from lm.data.tokenizers import hf as hf_tokenizer
  from lm.model import ModelConfig, ModelDef
  from lm.model import hf as hf_model
  from lm.train.optimizer import build_optimizer
  from lm.train.state import fresh_state

  hf_dir, workdir = Path(hf_dir).expanduser().resolve(), Path(workdir).expanduser().resolve()
  hf_config = read_hf_config(hf_dir)
  _check_new_dir(workdir, (HF_CONFIG, CONFIG_PY, 'checkpoints', TOKENIZER_DIR), '--workdir')
  config = config_lib.ConfigDict((config or config_lib.default_config()).to_dict())
  model_cfg = ModelConfig.from_hf(hf_config, **_training_fields(config.model))
  for key in hf_model.ARCHITECTURE_FIELDS:
    config.model[key] = getattr(model_cfg, key)
  log(f'[convert] {hf_dir}: {hf_config["model_type"]}, {model_cfg.num_layers} layers, width '
      f'{model_cfg.width}, {model_cfg.num_heads} heads ({model_cfg.num_kv_heads} kv), vocab '
      f'{model_cfg.vocab_size}, {model_cfg.param_count():,} parameters')

  has_tokenizer = (hf_dir / hf_tokenizer.HF_FILE).is_file()
  if has_tokenizer:
    tokenizer = hf_tokenizer.HFTokenizer.from_hf_dir(hf_dir)
    if tokenizer.vocab_size > model_cfg.vocab_size:
      raise UserError(f'vocabulary mismatch: {hf_dir / hf_tokenizer.HF_FILE} has '
                      f'{tokenizer.vocab_size} ids but {hf_dir / HF_CONFIG} has vocab_size='
                      f'{model_cfg.vocab_size}; token ids would overflow the embedding.')
    config.data.tokenizer.kind = 'hf'
    config.data.tokenizer.path = str(workdir / TOKENIZER_DIR)
  else:
    t = config.data.tokenizer
    size = {'byte': 259, 'sentencepiece': t.vocab_size}.get(t.kind)
    if size is not None and size > model_cfg.vocab_size:
      raise UserError(f'vocabulary mismatch: {hf_dir} has no tokenizer.json, and the config\'s '
                      f'data.tokenizer ({t.kind}) has {size} ids, more than the model\'s '
                      f'vocab_size={model_cfg.vocab_size}.')
    log(f'[convert] note: {hf_dir} has no tokenizer.json, so the workdir keeps the config\'s '
        f'data.tokenizer ({t.kind}); its ids are not the ones the model was trained on, '
        'so expect to fine-tune before the outputs mean anything.')

  # Validated against the HF directory's tokenizer: the workdir's copy is written last.
  resolved = config_lib.resolve(_with_tokenizer_dir(config, hf_dir if has_tokenizer else None),
                                num_devices=jax.device_count())
  resolved.data.tokenizer.path = config.data.tokenizer.path
  model_cfg = ModelConfig.from_config(resolved.model)
  model_def = ModelDef.create(model_cfg)
  tensors, source = read_hf_tensors(hf_dir)
  params = hf_model.params_from_hf(model_cfg, tensors, source=source)
  del tensors
  _check_shapes(params, jax.eval_shape(model_def.init_params, jax.random.key(0)))

  optimizer, _ = build_optimizer(resolved.optimizer, resolved.train.steps)
  params = jax.tree.map(jnp.asarray, params)
  _, train_key = jax.random.split(jax.random.key(resolved.seed))  # as fresh_state splits it
  state = {'params': params, 'opt_state': jax.jit(optimizer.init)(params),
           'step': jnp.zeros((), jnp.int32), 'rng': jax.random.key_data(train_key)}
  expected = jax.eval_shape(lambda: fresh_state(model_def, optimizer, resolved.seed))
  assert jax.tree.structure(state) == jax.tree.structure(expected), 'state layout drifted'

  workdir.mkdir(parents=True, exist_ok=True)
  if has_tokenizer:
    tok_dir = workdir / TOKENIZER_DIR
    tok_dir.mkdir()
    for name in (hf_tokenizer.HF_FILE, *hf_tokenizer.SPECIAL_FILES):
      if (hf_dir / name).is_file():
        shutil.copyfile(hf_dir / name, tok_dir / name)
  config_json = config_lib.to_json(resolved)
  with Checkpointer(workdir / 'checkpoints', async_save=False) as checkpoints:
    # No data position: the first training run starts its data stream from the beginning.
    checkpoints.save(0, state, data_state={}, config_json=config_json)
  (workdir / HF_CONFIG).write_text(config_json, encoding='utf-8')
  (workdir / CONFIG_PY).write_text(_config_py(config, hf_dir, workdir), encoding='utf-8')
  log(f'[convert] wrote {workdir}: checkpoint 0 (weights + fresh optimizer state), '
      f'{HF_CONFIG}, {CONFIG_PY}' + (f', {TOKENIZER_DIR}/' if has_tokenizer else ''))
  log(f'[convert] fine-tune: python -m lm.main --config={workdir / CONFIG_PY} '
      f'--workdir={workdir}   generate: python -m lm.generate --workdir={workdir} --prompt=...')
  return resolved


def _with_tokenizer_dir(config: config_lib.ConfigDict, hf_dir: Path | None
                        ) -> config_lib.ConfigDict:
  """A copy of `config` whose hf tokenizer path points at `hf_dir` (for validating before
  the workdir's copy exists)."""
  out = config_lib.ConfigDict(config.to_dict())
  if hf_dir is not None:
    out.data.tokenizer.path = str(hf_dir)
  return out


def _check_shapes(params: dict, expected: dict, prefix: str = '') -> None:
  """Every converted array has the shape the model expects (names the parameter)."""
  from lm.model.hf import HFConversionError
  if set(params) != set(expected):
    raise HFConversionError(f'converted parameters {prefix or "at the top"} have keys '
                            f'{sorted(params)}, the model {sorted(expected)}.')
  for k, v in params.items():
    if isinstance(v, dict):
      _check_shapes(v, expected[k], f'{prefix}{k}.')
    elif tuple(v.shape) != tuple(expected[k].shape):
      raise HFConversionError(f'parameter {prefix}{k}: converted shape {tuple(v.shape)}, the '
                              f'model expects {tuple(expected[k].shape)}.')


def _config_py(config: config_lib.ConfigDict, hf_dir: Path, workdir: Path) -> str:
  text = config_lib.to_json(config)
  assert "'''" not in text
  return (f'"""The experiment config of {workdir}, imported from {hf_dir} by\n'
          '`python -m lm.convert from-hf`. Fine-tune (it resumes from checkpoint 0):\n\n'
          f'    python -m lm.main --config={workdir / CONFIG_PY} --workdir={workdir} '
          '[--config.train.steps=N ...]\n"""\n\n'
          'from lm import config as config_lib\n\n'
          f"CONFIG_JSON = r'''{text}'''\n\n\n"
          'def get_config():\n'
          '  return config_lib.from_json(CONFIG_JSON)\n')


# ---- to-hf --------------------------------------------------------------------------------


def export_hf(workdir: str | os.PathLike, hf_dir: str | os.PathLike, step: int | None = None,
              *, log: Log = print) -> Path:
  """Writes checkpoint `step` (default: the latest) of `workdir` as an HF model in `hf_dir`."""
  import jax
  import numpy as np
  from safetensors.numpy import save_file

  from lm.checkpoint import Checkpointer, CheckpointError
  from lm.data.tokenizers import Tokenizer
  from lm.data.tokenizers import hf as hf_tokenizer
  from lm.model import ModelConfig, ModelDef
  from lm.model import hf as hf_model
  from lm.train.optimizer import build_optimizer
  from lm.train.state import fresh_state

  workdir, hf_dir = Path(workdir).expanduser().resolve(), Path(hf_dir).expanduser().resolve()
  config_path = workdir / HF_CONFIG
  if not config_path.is_file():
    raise UserError(f'{config_path} not found; is --workdir={workdir} a training workdir '
                    '(python -m lm.main or lm.convert from-hf)?')
  config = config_lib.from_json(config_path.read_text(encoding='utf-8'))
  if not config.model.vocab_size:
    raise UserError(f'{config_path} has model.vocab_size=0; a workdir written by training '
                    'records the tokenizer size there. Was it edited?')
  model_cfg = ModelConfig.from_config(config.model, seq_len=config.data.seq_len)
  hf_config = model_cfg.to_hf()  # refuses a model no HF family expresses, before reading
  tok = config.data.tokenizer
  _check_new_dir(hf_dir, (HF_CONFIG, HF_WEIGHTS), '--hf_dir')

  model_def = ModelDef.create(model_cfg)
  optimizer, _ = build_optimizer(config.optimizer, config.train.steps)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(lambda: fresh_state(model_def, optimizer, config.seed))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  ckpt_dir = workdir / 'checkpoints'
  if not ckpt_dir.is_dir():
    raise UserError(f'{ckpt_dir} not found: the run in {workdir} saved no checkpoint yet.')
  with Checkpointer(ckpt_dir, read_only=True) as checkpoints:
    step = checkpoints.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {ckpt_dir}: the run saved none yet.')
    state, _, _ = checkpoints.restore(target, step)
  tensors = hf_model.params_to_hf(model_cfg, state['params'])
  del state

  # lm's own tokenizers all use the base class's special ids (lm/data/tokenizers/base.py).
  ids = (hf_tokenizer.HFTokenizer.from_hf_dir(tok.path) if tok.kind == 'hf' else Tokenizer)
  hf_config.update(bos_token_id=int(ids.bos_id), eos_token_id=int(ids.eos_id),
                   pad_token_id=int(ids.pad_id))

  hf_dir.mkdir(parents=True, exist_ok=True)
  tmp = hf_dir / f'.{HF_WEIGHTS}.tmp'
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
            metadata={'format': 'pt'})  # transformers requires the format tag
  os.replace(tmp, hf_dir / HF_WEIGHTS)
  (hf_dir / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + '\n', encoding='utf-8')
  if tok.kind == 'hf':
    for name in (hf_tokenizer.HF_FILE, *hf_tokenizer.SPECIAL_FILES):
      if (Path(tok.path) / name).is_file():
        shutil.copyfile(Path(tok.path) / name, hf_dir / name)
  else:
    log(f"[convert] note: the run's tokenizer ({tok.kind}) is lm's own and is not exported; "
        'tokenize as lm does (its ids: pad 0, bos 1, eos 2) to use the model.')
  log(f'[convert] wrote {hf_dir}: {hf_config["model_type"]} model from checkpoint {step} of '
      f'{workdir} ({len(tensors)} tensors, {model_cfg.param_count():,} parameters)')
  return hf_dir


# ---- command line -------------------------------------------------------------------------

_DEFAULT_CONFIG = str(REPO_ROOT / 'configs' / 'default.py')
_HF_DIR: Any = None  # the flag holders, set by _define_flags
_WORKDIR: Any = None
_STEP: Any = None
_CONFIG: Any = None


def _define_flags() -> None:
  """The command line's flags; defined only when run as a program, so that importing this
  module next to lm.generate or lm.main (which define --workdir too) works."""
  global _HF_DIR, _WORKDIR, _STEP, _CONFIG
  _HF_DIR = flags.DEFINE_string(
      'hf_dir', None, 'from-hf: the Hugging Face model directory to read (config.json, '
      'model.safetensors, optional tokenizer.json); to-hf: the directory to write it to.')
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'from-hf: the new workdir to write (must not hold a run); to-hf: the '
      'training workdir to export.')
  _STEP = flags.DEFINE_integer('step', None, 'to-hf: the checkpoint step to export; default: '
                               'the latest.')
  if not any(a.startswith(('--config=', '-config=')) or a in ('--config', '-config')
             for a in sys.argv[1:]):
    sys.argv.insert(1, f'--config={_DEFAULT_CONFIG}')  # loads (with overrides) at parsing
  _CONFIG = config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG,
      'from-hf: the experiment config the workdir starts from (data, optimizer, training); '
      "its model architecture is replaced by the HF model's. Override fields with "
      '--config.a.b=v.')


def main(argv: list[str]) -> None:
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only manager is read-only
  from lm.checkpoint import CheckpointError
  from lm.data import DataError
  from lm.model.hf import HFConversionError
  try:
    if len(argv) != 2 or argv[1] not in COMMANDS:
      raise UserError(f'give one command, {" or ".join(COMMANDS)}: python -m lm.convert '
                      'from-hf --hf_dir=DIR --workdir=OUT, or python -m lm.convert to-hf '
                      '--workdir=DIR --hf_dir=OUT [--step=N]')
    for name, flag in (('--hf_dir', _HF_DIR), ('--workdir', _WORKDIR)):
      if not flag.value:
        raise UserError(f'{argv[1]} needs {name}.')
    if argv[1] == 'from-hf':
      import_hf(_HF_DIR.value, _WORKDIR.value, config_lib.from_flag(_CONFIG))
    else:
      export_hf(_WORKDIR.value, _HF_DIR.value, _STEP.value)
  except (UserError, config_lib.ConfigError, DataError, CheckpointError, HFConversionError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
