"""Continue prompts with a trained run: `python -m lm.generate --workdir=DIR --prompt=TEXT`.

Reads the workdir's config.json and its latest (or --step) checkpoint read-only, rebuilds
the tokenizer the run used, and prints each prompt's continuation (KV-cache decoding).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

if __name__ == '__main__':  # flags exist only for the command line
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'Training workdir (holds config.json and checkpoints/) to load; required.')
  _PROMPT = flags.DEFINE_multi_string(
      'prompt', [], 'Prompt text; repeat the flag for a batch of prompts.')
  _PROMPT_FILE = flags.DEFINE_string(
      'prompt_file', None, 'A UTF-8 text file whose whole content is one more prompt.')
  _MAX_NEW_TOKENS = flags.DEFINE_integer(
      'max_new_tokens', 100, 'Tokens to generate per prompt (at most; a stop string ends early).')
  _TEMPERATURE = flags.DEFINE_float(
      'temperature', 0.8, 'Sampling temperature; 0 = greedy (always the most likely token).')
  _TOP_K = flags.DEFINE_integer(
      'top_k', 0, 'Sample only from the k most likely tokens; 0 = no top-k filter.')
  _TOP_P = flags.DEFINE_float(
      'top_p', 1.0, 'Sample only from the smallest set of tokens whose probability reaches p '
      '(nucleus); 1 = no top-p filter.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives the same text.')
  _STOP = flags.DEFINE_multi_string(
      'stop', [], 'Stop a continuation at the first occurrence of this text (not printed); '
      'repeatable.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the latest.')
  _CACHE_LEN = flags.DEFINE_integer(
      'cache_len', 0, 'KV cache length (longest prompt + continuation, in tokens); 0 = the '
      "model's max_len, or what the request needs for RoPE models.")
  _TOKENIZER_DIR = flags.DEFINE_string(
      'tokenizer_dir', None, 'Directory of a saved tokenizer (tokenizer.json); default: the '
      'one the run used, from the (cached) data preparation its config describes.')
  _QUANTIZE = flags.DEFINE_enum(
      'quantize', 'none', ['none', 'int8'], 'Weight quantization: int8 keeps matmul weights as '
      'int8 with a float scale per output channel (about 4x less weight memory).')
  _MESH_TENSOR = flags.DEFINE_integer(
      'mesh_tensor', 1, 'Tensor-parallel devices: parameters and the KV cache are split over '
      "them by the run's mesh.preset + mesh.rules (heads, kv_heads, mlp, vocab).")
  _MESH_DATA = flags.DEFINE_integer(
      'mesh_data', 1, 'Data-parallel devices: the batch of prompts is split over them.')
  _CPU_DEVICES = flags.DEFINE_integer(
      'cpu_devices', 0, 'On a CPU, split the host into this many XLA devices (needed for '
      '--mesh_tensor/--mesh_data > 1 there); 0 = leave the default.')


class UserError(Exception):
  """A problem with the command line or the workdir; printed as one line, exit status 1."""


def check_workdir(workdir: str) -> None:
  """Fails fast, before jax is imported, on a workdir that cannot hold a trained model
  (lm.evaluate, lm.export and lm.serve check theirs with it too)."""
  if not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} does not exist')
  if not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise UserError(f'workdir {workdir} has no config.json; is it a training workdir '
                    '(python -m lm.main --workdir=...)?')
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  if not steps:
    raise UserError(f'workdir {workdir} has no checkpoints (nothing in {ckpt}); train it '
                    'first, or wait for its first checkpoint.')


def _prompts() -> list[str]:
  prompts = list(_PROMPT.value)
  if _PROMPT_FILE.value:
    try:
      with open(_PROMPT_FILE.value, encoding='utf-8') as f:
        prompts.append(f.read())
    except OSError as e:
      raise UserError(f'cannot read --prompt_file={_PROMPT_FILE.value}: {e}') from e
  if not prompts:
    raise UserError('give a prompt with --prompt=TEXT or --prompt_file=FILE')
  return prompts


def load(workdir: str, step: int | None = None, tokenizer_dir: str | None = None, *,
         quantize: str = 'none', mesh=None):
  """(ModelDef, params, tokenizer, step) of a training workdir, read-only, on one device,
  or split over `mesh` by the run's logical-axis rules; quantize='int8' gives int8 weights."""
  import jax

  from lm import config as config_lib
  from lm.checkpoint import Checkpointer
  from lm.data import tokenizers
  from lm.model import ModelConfig
  from lm.train.optimizer import build_optimizer
  from lm.train.state import ModelDef, fresh_state

  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = config_lib.from_json(f.read())
  config_lib.fill_new_keys(config)  # a run written by an older lm: new keys take defaults
  if tokenizer_dir:
    tokenizer = tokenizers.load(tokenizer_dir)
  else:
    from lm.train import finetune  # documents, or sft records (the base run's tokenizer)
    tokenizer = finetune.prepare_data(config, log=lambda _: None, check_base=False).tokenizer
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size,
                                      seq_len=config.data.seq_len)
  model_def = ModelDef.create(model_cfg)
  optimizer, _ = build_optimizer(config.optimizer, config.train.steps)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(lambda: fresh_state(model_def, optimizer, config.seed))
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        shapes)
  checkpoints = Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    step = checkpoints.latest_step() if step is None else step
    state, _, _ = checkpoints.restore(target, step)
  finally:
    checkpoints.close()
  params = state['params']
  if quantize != 'none':
    from lm.infer.quantize import quantize as quantize_params
    model_def, params = quantize_params(model_def, params, quantize)
  if mesh is not None:
    from lm import parallel
    from lm.infer.sharding import shard_params
    params = shard_params(model_def, params, mesh, parallel.rules_for(config.mesh))
  return model_def, params, tokenizer, step


def mesh_rules(workdir: str):
  """The logical-axis rules the run in `workdir` was trained with (its config.json)."""
  from lm import config as config_lib
  from lm import parallel
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    return parallel.rules_for(config_lib.from_json(f.read()).mesh)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only manager is read-only
  try:
    if not _WORKDIR.value:
      raise UserError('--workdir is required')
    workdir = os.path.abspath(_WORKDIR.value)
    check_workdir(workdir)
    prompts = _prompts()
    from lm import runtime
    runtime.use_cpu_devices(_CPU_DEVICES.value)  # before jax is imported
    from lm.checkpoint import CheckpointError  # deferred: --help should not import jax
    from lm.config import ConfigError
    from lm.data import DataError
    from lm.infer import Decoder, SamplingConfig
    try:
      sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                top_p=_TOP_P.value)
      mesh = rules = None
      if _MESH_TENSOR.value * _MESH_DATA.value > 1:
        from lm.infer.sharding import decode_mesh
        mesh = decode_mesh(tensor=_MESH_TENSOR.value, data=_MESH_DATA.value)
        rules = mesh_rules(workdir)
      model_def, params, tokenizer, step = load(workdir, _STEP.value, _TOKENIZER_DIR.value,
                                                quantize=_QUANTIZE.value, mesh=mesh)
      decoder = Decoder(model_def, cache_len=_CACHE_LEN.value or None, mesh=mesh,
                        rules=rules or ())
      texts = decoder.generate_text(params, tokenizer, prompts,
                                    max_new_tokens=_MAX_NEW_TOKENS.value, sampling=sampling,
                                    seed=_SEED.value, stop=_STOP.value)
    except (ValueError, ConfigError, DataError, CheckpointError) as e:
      raise UserError(str(e)) from e
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'[checkpoint step {step} of {workdir}]', file=sys.stderr)
  for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
    if len(prompts) > 1:
      print(f'---- prompt {i + 1} ----')
    print(prompt + text)


if __name__ == '__main__':
  app.run(main)
