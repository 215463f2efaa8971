"""`python -m lm generate --workdir=DIR --prompt=TEXT`: continue prompts with a trained run.

Loads the run (its own config and tokenizer, the latest or --step checkpoint, read-only)
with lm.run.load_run and prints each prompt's continuation (KV-cache decoding).
"""

from __future__ import annotations

import sys

from absl import flags, logging

from lm import cli
from lm import workdir as workdir_lib
from lm.errors import UserError

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


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value:
    raise UserError('--workdir is required')
  prompts = _prompts()
  workdir_lib.check_trained(_WORKDIR.value)  # (load_run's first check, before jax loads)
  from lm import runtime  # jax, flax, orbax: once the flags and the workdir are checked
  from lm.infer import Decoder, SamplingConfig
  from lm.infer.sharding import decode_mesh
  from lm.run import load_run
  runtime.use_cpu_devices(_CPU_DEVICES.value)  # before the first device is used
  sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                            top_p=_TOP_P.value)
  mesh = None
  if _MESH_TENSOR.value * _MESH_DATA.value > 1:
    mesh = decode_mesh(tensor=_MESH_TENSOR.value, data=_MESH_DATA.value)
  run = load_run(_WORKDIR.value, _STEP.value, mesh=mesh, quantize=_QUANTIZE.value)
  decoder = Decoder(run.model_def, cache_len=_CACHE_LEN.value or None, mesh=mesh,
                    rules=run.rules if mesh is not None else ())
  texts = decoder.generate_text(run.params, run.tokenizer, prompts,
                                max_new_tokens=_MAX_NEW_TOKENS.value, sampling=sampling,
                                seed=_SEED.value, stop=_STOP.value)
  print(f'[checkpoint step {run.step} of {run.workdir}]', file=sys.stderr)
  for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
    if len(prompts) > 1:
      print(f'---- prompt {i + 1} ----')
    print(prompt + text)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
