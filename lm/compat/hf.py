"""Hugging Face GPT-2 and LLaMA models in and out of lm runs, with no torch needed.

`import_hf` reads an HF directory's config.json + model.safetensors (or a sharded
model.safetensors.index.json) and writes a normal run through lm.run.write_run: config.json
(the experiment config with the HF model's architecture), tokenizer/, checkpoint 0 holding
the weights (no optimizer state: fine-tuning starts a fresh one) and config.py (the same
config as a --config file). With a tokenizer.json in the HF directory the run uses it; its
files are kept under hf_tokenizer/, which data.tokenizer.path names for fine-tuning.

`export_hf` loads a run through lm.run.load_run and writes config.json + model.safetensors
(+ the HF tokenizer files if the run has one) that transformers' from_pretrained loads.
The name mapping of configs and weights lives in lm/compat/hf_mapping.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.compat import hf_mapping
from lm.config import ConfigDict
from lm.data.mixture import prepare_data
from lm.data.tokenizers import ByteTokenizer, Tokenizer
from lm.data.tokenizers import hf as hf_tokenizer
from lm.errors import ConversionError
from lm.model import ModelConfig
from lm.run import load_run, write_run

HF_CONFIG = 'config.json'  # of the HF directory (not the workdir's, lm.workdir's business)
HF_WEIGHTS = 'model.safetensors'
HF_INDEX = 'model.safetensors.index.json'
HF_TOKENIZER_DIR = 'hf_tokenizer'  # under an imported workdir: the HF tokenizer's own files
HF_TOKENIZER_FILES = (hf_tokenizer.HF_FILE, *hf_tokenizer.SPECIAL_FILES,
                      hf_tokenizer.CHAT_TEMPLATE_FILE)

Log = Callable[[str], None]


# ---- reading HF directories ---------------------------------------------------------------


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
  """The config.json of an HF model directory, checked to exist and parse."""
  path = Path(hf_dir) / HF_CONFIG
  if not Path(hf_dir).is_dir():
    raise ConversionError(f'--hf_dir={os.fspath(hf_dir)} is not a directory; give the directory '
                          'a Hugging Face model was saved to (save_pretrained).')
  if not path.is_file():
    raise ConversionError(f'{path} not found; a Hugging Face model directory holds config.json '
                          f'and {HF_WEIGHTS}.')
  try:
    config = json.loads(path.read_text(encoding='utf-8'))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f'{path} is not valid JSON ({e}).') from e
  if not isinstance(config, dict):
    raise ConversionError(f'{path} must hold a JSON object, got {type(config).__name__}.')
  return config


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
  """One safetensors file; a truncated or corrupt one is named with the fix."""
  try:
    return load_file(path)
  except SafetensorError as e:
    raise ConversionError(
        f'{path} is not a complete safetensors file ({e}); it was probably cut short while '
        'downloading or copying: fetch or save_pretrained it again.') from e


def read_hf_tensors(hf_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """({name: numpy array}, a description of the files) of an HF model's safetensors."""
  hf_dir = Path(hf_dir)
  single, index = hf_dir / HF_WEIGHTS, hf_dir / HF_INDEX
  if single.is_file():
    return _load_safetensors(single), str(single)
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text(encoding='utf-8'))['weight_map']
      shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ConversionError(f'{index} is not a safetensors index (no "weight_map": {e}).') from e
    tensors: dict[str, np.ndarray] = {}
    for name in shards:
      if not (hf_dir / name).is_file():
        raise ConversionError(f'{hf_dir / name}, named in {index}, not found.')
      tensors.update(_load_safetensors(hf_dir / name))
    return tensors, f'the shards of {index}'
  others = sorted(p.name for p in hf_dir.glob('*.bin')) + sorted(p.name for p in
                                                                  hf_dir.glob('*.pt'))
  hint = (f' ({", ".join(others)} are torch pickles: load the model in transformers and '
          'save_pretrained(..., safe_serialization=True) to get safetensors)' if others else '')
  raise ConversionError(f'{hf_dir} holds no {HF_WEIGHTS} or {HF_INDEX}{hint}.')


# ---- from-hf ------------------------------------------------------------------------------


def _training_fields(model_section: ConfigDict) -> dict[str, Any]:
  """The ModelConfig fields of `config.model` that are training choices, not architecture."""
  # moe is architecture too (GPT-2 and LLaMA are dense): the imported model has none.
  names = ({f.name for f in dataclasses.fields(ModelConfig)}
           - set(hf_mapping.ARCHITECTURE_FIELDS) - {'moe'})
  return {k: v for k, v in model_section.to_dict().items() if k in names}


def _tokenizer(config: ConfigDict, hf_dir: Path, vocab_size: int, log: Log
               ) -> tuple[Tokenizer, bool]:
  """(the run's tokenizer, whether it is the HF directory's own)."""
  if (hf_dir / hf_tokenizer.HF_FILE).is_file():
    tokenizer = hf_tokenizer.HFTokenizer.from_hf_dir(hf_dir)
    if tokenizer.vocab_size > vocab_size:
      raise ConversionError(
          f'vocabulary mismatch: {hf_dir / hf_tokenizer.HF_FILE} has {tokenizer.vocab_size} '
          f'ids but {hf_dir / HF_CONFIG} has vocab_size={vocab_size}; token ids would overflow '
          'the embedding.')
    return tokenizer, True
  t = config.data.tokenizer
  size = {'byte': ByteTokenizer().vocab_size, 'sentencepiece': t.vocab_size}.get(t.kind)
  if size is not None and size > vocab_size:
    raise ConversionError(
        f"vocabulary mismatch: {hf_dir} has no tokenizer.json, and the config's "
        f"data.tokenizer ({t.kind}) has {size} ids, more than the model's "
        f'vocab_size={vocab_size}.')
  log(f"[convert] note: {hf_dir} has no tokenizer.json, so the run keeps the config's "
      f'data.tokenizer ({t.kind}); its ids are not the ones the model was trained on, '
      'so expect to fine-tune before the outputs mean anything.')
  if t.kind == 'byte':
    return ByteTokenizer(), False
  # Trained tokenizers (sentencepiece, char) come from the config's data, as training's.
  tokenizer = prepare_data(config.data, config.data.seq_len, log=log).tokenizer
  if tokenizer.vocab_size > vocab_size:
    raise ConversionError(f"vocabulary mismatch: the config's data.tokenizer ({t.kind}) has "
                          f"{tokenizer.vocab_size} ids, more than the model's "
                          f'vocab_size={vocab_size}.')
  return tokenizer, False


def import_hf(hf_dir: str | os.PathLike, workdir: str | os.PathLike,
              config: ConfigDict | None = None, *, log: Log = print) -> ConfigDict:
  """Writes the run `workdir` from the HF model in `hf_dir`; returns its (resolved) config.

  `config` (default: configs/default.py) gives everything but the model architecture:
  data, optimizer, training settings, and the model's dtype/remat/dropout choices. Nothing
  is written unless the whole import succeeds.
  """
  hf_dir = Path(hf_dir).expanduser().resolve()
  hf_config = read_hf_config(hf_dir)
  workdir_lib.check_new(workdir, '--workdir')
  config = ConfigDict((config or config_lib.default_config()).to_dict())
  model_cfg = hf_mapping.config_from_hf(hf_config, **_training_fields(config.model))
  for key in hf_mapping.ARCHITECTURE_FIELDS:
    config.model[key] = getattr(model_cfg, key)
  log(f'[convert] {hf_dir}: {hf_config["model_type"]}, {model_cfg.num_layers} layers, width '
      f'{model_cfg.width}, {model_cfg.num_heads} heads ({model_cfg.num_kv_heads} kv), vocab '
      f'{model_cfg.vocab_size}, {model_cfg.param_count():,} parameters')
  tokenizer, own_tokenizer = _tokenizer(config, hf_dir, model_cfg.vocab_size, log)
  files = {}
  if own_tokenizer:
    config.data.tokenizer.kind = 'hf'
    for name in HF_TOKENIZER_FILES:
      if (hf_dir / name).is_file():
        files[f'{HF_TOKENIZER_DIR}/{name}'] = (hf_dir / name).read_text(encoding='utf-8')
    config.data.tokenizer.path = str(hf_dir)  # validated here; the workdir's copy is written last
  resolved = config_lib.resolve(config, num_devices=jax.device_count())
  if own_tokenizer:
    config.data.tokenizer.path = resolved.data.tokenizer.path = workdir_lib.name(
        workdir_lib.path(workdir) / HF_TOKENIZER_DIR)
  model_cfg = ModelConfig.from_config(resolved.model)
  tensors, source = read_hf_tensors(hf_dir)
  params = jax.tree.map(jnp.asarray, hf_mapping.params_from_hf(model_cfg, tensors,
                                                               source=source))
  del tensors
  files[workdir_lib.CONFIG_PY] = _config_py(config, hf_dir, workdir_lib.name(workdir))
  write_run(workdir, resolved, params, tokenizer, step=0, files=files, flag='--workdir')
  name = workdir_lib.name(workdir)
  log(f'[convert] wrote {name}: checkpoint 0 (the weights, no optimizer state), '
      f'{workdir_lib.CONFIG_FILE}, {workdir_lib.TOKENIZER_DIR}/, {workdir_lib.CONFIG_PY}'
      + (f', {HF_TOKENIZER_DIR}/' if own_tokenizer else ''))
  log(f'[convert] fine-tune: python -m lm.main --config={name}/{workdir_lib.CONFIG_PY} '
      f'--workdir={name}   generate: python -m lm.generate --workdir={name} --prompt=...')
  return resolved


def _config_py(config: ConfigDict, hf_dir: Path, workdir: str) -> str:
  text = config_lib.to_json(config)
  assert "'''" not in text
  return (f'"""The experiment config of {workdir}, imported from {hf_dir} by\n'
          '`python -m lm.convert from-hf`. Fine-tune (it starts from checkpoint 0):\n\n'
          f'    python -m lm.main --config={workdir}/{workdir_lib.CONFIG_PY} '
          f'--workdir={workdir} [--config.train.steps=N ...]\n"""\n\n'
          'from lm import config as config_lib\n\n'
          f"CONFIG_JSON = r'''{text}'''\n\n\n"
          'def get_config():\n'
          '  return config_lib.from_json(CONFIG_JSON)\n')


# ---- to-hf --------------------------------------------------------------------------------


def _check_exportable(workdir: str | os.PathLike) -> None:
  """Refuses a run no HF family expresses before its weights are read."""
  workdir_lib.check_trained(workdir)
  config = workdir_lib.read_config(workdir)
  cfg = ModelConfig.from_config(config.model, vocab_size=config.model.vocab_size or 1,
                                seq_len=config.data.seq_len).with_lora(config.lora)
  hf_mapping.config_to_hf(cfg)


def _hf_tokenizer_files(tokenizer: Tokenizer, source: str) -> dict[str, str]:
  """The HF files of the run's saved HF tokenizer: its tokenizer.json, and the special-token
  files of `source` (the imported directory) or, when it is gone, a tokenizer_config.json;
  the chat_template.jinja of `source` when it has one."""
  with tempfile.TemporaryDirectory(prefix='lm-hf-tokenizer-') as tmp:
    tokenizer.save(Path(tmp))
    text = (Path(tmp) / hf_tokenizer.SAVED_FILE).read_text(encoding='utf-8')
  files = {hf_tokenizer.HF_FILE: text}
  for name in hf_tokenizer.SPECIAL_FILES:
    if source and (Path(source) / name).is_file():
      files[name] = (Path(source) / name).read_text(encoding='utf-8')
  if len(files) == 1:
    names = {t['id']: t['content'] for t in json.loads(text).get('added_tokens', [])}
    files['tokenizer_config.json'] = json.dumps({
        'tokenizer_class': 'PreTrainedTokenizerFast',
        **{f'{role}_token': names[i] for role, i in (
            ('bos', tokenizer.bos_id), ('eos', tokenizer.eos_id), ('pad', tokenizer.pad_id))
           if i in names}}, indent=2) + '\n'
  template = Path(source) / hf_tokenizer.CHAT_TEMPLATE_FILE if source else None
  if template is not None and template.is_file():
    files[hf_tokenizer.CHAT_TEMPLATE_FILE] = template.read_text(encoding='utf-8')
  return files


def write_hf_model(model_cfg: ModelConfig, params, hf_dir: str | os.PathLike, *, bos_id: int,
                   eos_id: int, pad_id: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Writes `params` of a `model_cfg` model as HF config.json + model.safetensors in `hf_dir`
  (what `export_hf` writes of a run, also for weights that are in no run, as
  `python -m lm bench_decode --vs_transformers` needs). Returns (HF config, tensors)."""
  hf_dir = Path(hf_dir)
  hf_config = hf_mapping.config_to_hf(model_cfg)
  tensors = hf_mapping.params_to_hf(model_cfg, params)
  hf_config.update(bos_token_id=int(bos_id), eos_token_id=int(eos_id), pad_token_id=int(pad_id))
  hf_dir.mkdir(parents=True, exist_ok=True)
  tmp = hf_dir / f'.{HF_WEIGHTS}.tmp'
  save_file(tensors, tmp, metadata={'format': 'pt'})  # transformers requires the format tag
  os.replace(tmp, hf_dir / HF_WEIGHTS)
  (hf_dir / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + '\n', encoding='utf-8')
  return hf_config, tensors


def export_hf(workdir: str | os.PathLike, hf_dir: str | os.PathLike, step: int | None = None,
              *, log: Log = print) -> Path:
  """Writes checkpoint `step` (default: the latest) of `workdir` as an HF model in `hf_dir`."""
  hf_dir = Path(hf_dir).expanduser().resolve()
  _check_exportable(workdir)
  clash = [n for n in (HF_CONFIG, HF_WEIGHTS) if (hf_dir / n).exists()]
  if clash:
    raise ConversionError(f'--hf_dir={hf_dir} already holds {", ".join(clash)}; refusing to '
                          'overwrite them. Pick another directory or delete them.')
  run = load_run(workdir, step, log=log)
  model_cfg = run.model_def.cfg
  tok = run.tokenizer  # lm's own tokenizers all use the base class's special ids
  hf_config, tensors = write_hf_model(model_cfg, run.params, hf_dir, bos_id=tok.bos_id,
                                      eos_id=tok.eos_id, pad_id=tok.pad_id)
  if tok.kind == 'hf':
    for name, text in _hf_tokenizer_files(tok, run.config.data.tokenizer.path).items():
      (hf_dir / name).write_text(text, encoding='utf-8')
  else:
    log(f"[convert] note: the run's tokenizer ({tok.kind}) is lm's own and is not exported; "
        'tokenize as lm does (its ids: pad 0, bos 1, eos 2) to use the model.')
  log(f'[convert] wrote {hf_dir}: {hf_config["model_type"]} model from checkpoint {run.step} '
      f'of {run.workdir} ({len(tensors)} tensors, {model_cfg.param_count():,} parameters)')
  return hf_dir
