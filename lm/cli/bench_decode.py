"""Benchmark decoding: `python -m lm bench_decode --config=configs/X.py [--mem_bw_gbs=...]`.

For each batch size: time to first token (prefill of the prompts and the first sampled
token) and decode tokens/s with the KV cache (lm.infer.Decoder.stream, the path
lm.generate uses), against naive decoding that recomputes the whole sequence for every
token (one full forward per token, as the training loop's sample does). It also counts the
bytes a decode step reads (the weights it multiplies by plus the whole KV cache, which
attention reads up to its full length) and, with --mem_bw_gbs, the fraction of a
memory-bandwidth bound that the measured step rate implies. Parameters are random: speed
does not depend on their values.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from lm import cli
from lm import config as config_lib
from lm.errors import UserError
from lm.infer.bench import run_benchmark, run_vs_transformers

_CONFIG = config_lib.define_config_flag(
    'config', 'configs/default.py', 'Experiment config file (its model is benchmarked); '
    '--config.<field>=<v> overrides.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes (prompts decoded '
                                 'together) to measure, comma-separated.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 64, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'Tokens generated per row (KV cache).')
_NAIVE_TOKENS = flags.DEFINE_integer(
    'naive_tokens', 16, 'Tokens generated per row by the naive full-recomputation decoder; '
    '0 skips it.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats of each measurement (median).')
_QUANTIZE = flags.DEFINE_enum('quantize', 'none', ['none', 'int8'],
                              'Weight quantization of the benchmarked model.')
_MEM_BW = flags.DEFINE_float(
    'mem_bw_gbs', 0.0, 'Memory bandwidth of the device in GB/s (e.g. 3350 for an H100 SXM); '
    'when given, the fraction of the bandwidth bound a decode step reaches is printed.')
_VOCAB = flags.DEFINE_integer('vocab_size', 0, 'Vocabulary size when config.model.vocab_size '
                              'is 0; default: data.tokenizer.vocab_size (sentencepiece), 259 '
                              '(byte), else the prepared tokenizer\'s.')
_VS_HF = flags.DEFINE_bool(
    'vs_transformers', False, 'Instead: greedy decode tokens/s of lm (Decoder.generate and the '
    "serving engine's slots) against Hugging Face transformers' generate (torch CPU) on the "
    'same weights, exported as `lm convert to-hf` does, side by side (best of --repeats).')
_STEPS_PER_CALL = flags.DEFINE_integer(
    'steps_per_call', 8, 'With --vs_transformers: decode steps per dispatch of the engine path.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def _batch_sizes() -> list[int]:
  fix = f'--batch_sizes={",".join(_BATCH_SIZES.value)}: must be positive integers, e.g. 1,16'
  try:
    sizes = [int(b) for b in _BATCH_SIZES.value]
  except ValueError:
    raise UserError(fix) from None
  if not sizes or min(sizes) < 1:
    raise UserError(fix)
  return sizes


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  config = cli.config_from_flag(_CONFIG)  # before jax starts its devices
  batch_sizes = _batch_sizes()
  for name, flag in (('prompt_len', _PROMPT_LEN), ('new_tokens', _NEW_TOKENS),
                     ('repeats', _REPEATS)):
    if flag.value < 1 or (name == 'new_tokens' and flag.value < 2):
      raise UserError(f'--{name}={flag.value} is too small')
  if _VS_HF.value:
    if _QUANTIZE.value != 'none':
      raise UserError('--vs_transformers compares float weights; drop --quantize')
    if _STEPS_PER_CALL.value < 1:
      raise UserError(f'--steps_per_call={_STEPS_PER_CALL.value} must be >= 1')
    r = run_vs_transformers(config, batch_sizes=batch_sizes, prompt_len=_PROMPT_LEN.value,
                            new_tokens=_NEW_TOKENS.value, repeats=_REPEATS.value,
                            vocab_size=_VOCAB.value, steps_per_call=_STEPS_PER_CALL.value)
    print(f"device: {r['device']} (jax {r['jax']}; torch {r['torch']} with "
          f"{r['torch_threads']} threads, transformers {r['transformers']}); "
          f"{r['params']:,} parameters; prompt {r['prompt_len']} + {r['new_tokens']} new "
          f"tokens, greedy, best of {r['repeats']}")
    for row in r['rows']:
      print(f"batch {row['batch']:>3}: " + ', '.join(
          f"{name} {row[name]['tokens_per_sec']:,.0f} tokens/s "
          f"({row[name]['seconds'] * 1e3:.0f} ms)"
          for name in ('lm_generate', 'lm_engine', 'transformers')) +
          f"; lm/transformers {row['lm_generate_vs_transformers']:.2f}x (generate), "
          f"{row['lm_engine_vs_transformers']:.2f}x (engine); same tokens "
          f"{100 * row['same_tokens_as_transformers']:.0f}%")
    _write_json(r)
    return
  r = run_benchmark(config, batch_sizes=batch_sizes, prompt_len=_PROMPT_LEN.value,
                    new_tokens=_NEW_TOKENS.value, naive_tokens=_NAIVE_TOKENS.value,
                    repeats=_REPEATS.value, quantize=_QUANTIZE.value, vocab_size=_VOCAB.value,
                    mem_bw_gbs=_MEM_BW.value)
  print(f"device: {r['device']} (jax {r['jax']})")
  print(f"model: {r['params']:,} parameters, weights {r['weight_bytes']:,} bytes "
        f"({r['quantize']}); prompt {r['prompt_len']} + {r['new_tokens']} new tokens "
        f"(cache {r['cache_len']})")
  for row in r['rows']:
    by = row['bytes_per_step']
    print(f"batch {row['batch']:>3}: time to first token {row['ttft_ms']:.1f} ms; KV cache "
          f"{row['kv_tokens_per_sec']:,.0f} tokens/s ({row['step_ms']:.2f} ms/step)" +
          (f"; naive {row['naive_tokens_per_sec']:,.0f} tokens/s -> {row['kv_speedup']:.1f}x"
           if 'naive_tokens_per_sec' in row else ''))
    print(f"           reads {by['total']:,} bytes/step (weights {by['weights']:,}, KV cache "
          f"{by['kv_cache']:,}) = {row['bytes_per_token']:,.0f} bytes/token; "
          f"{row['achieved_gbs']:.1f} GB/s" +
          (f" = {100 * row['bandwidth_fraction']:.1f}% of {r['mem_bw_gbs']:g} GB/s"
           if 'bandwidth_fraction' in row else ''))
  _write_json(r)


def _write_json(r: dict) -> None:
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(r, f, indent=2)
  sys.stdout.flush()


def run() -> None:
  cli.run(main)


if __name__ == '__main__':
  run()
