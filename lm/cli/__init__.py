"""The commands: one thin module per command (its flags, one library call, printing).

`python -m lm <command> [--flags]` dispatches here (lm/__main__.py); the older spellings
`python -m lm.main`, `python -m lm.generate`, ... are shims onto the same modules. A
command module defines its absl flags at import, so only a command's own process imports
it: library code never imports lm.cli (the suite checks it).

`run(main)` is the one error boundary: a `UserError` (lm/errors.py) is printed as one
line, `error: ...`, with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from absl import app, flags, logging

from lm import config as config_lib
from lm.config import ConfigDict
from lm.errors import UserError

# command name -> (module, one line of help); `python -m lm` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    'train': ('lm.cli.train', 'train or resume a run (the same as python -m lm.main)'),
    'generate': ('lm.cli.generate', 'continue prompts with a trained run (KV-cache decoding)'),
    'serve': ('lm.cli.serve', 'serve a run over HTTP (OpenAI-style completions)'),
    'evaluate': ('lm.cli.evaluate', 'score a run: perplexity, generation, classification, lm-eval'),
    'export': ('lm.cli.export', 'write a standalone jax.export artifact of a run'),
    'quantize': ('lm.cli.quantize', 'compare float and int8 perplexity and weight bytes'),
    'convert': ('lm.cli.convert', 'Hugging Face weights in (from-hf) and out (to-hf)'),
    'lora_merge': ('lm.cli.lora_merge', "fold a LoRA run's adapters into its base weights"),
    'btm': ('lm.cli.btm', 'branch-train-merge: branch, merge and eval domain experts'),
    'plan': ('lm.cli.plan', 'parameters, FLOPs and memory per device of a config on a mesh'),
    'bench': ('lm.cli.bench', 'time the train step: tokens/s and MFU'),
    'bench_decode': ('lm.cli.bench_decode', 'time decoding: KV cache vs recomputation'),
    'bench_serve': ('lm.cli.bench_serve', 'load a server: Poisson arrivals, TTFT and latency'),
    'bench_attention': ('lm.cli.bench_attention', 'attention implementations: time, memory, MFU'),
    'sweep': ('lm.cli.sweep', 'train a grid of configs, one workdir each, and tabulate them'),
    'plot': ('lm.cli.plot', 'loss curves of several runs on one figure'),
    'inspect': ('lm.cli.inspect', 'attention maps, per-token loss and top-k predictions'),
    'prune': ('lm.cli.prune', 'structured pruning: a smaller dense run from a trained one'),
    'clean': ('lm.cli.clean', 'clean raw text/JSONL/Parquet/WARC into a dataset (datatrove)'),
}


# Libraries that define absl flags of their own (--grain_py_debug_mode, --tfds_debug_verbose,
# --experimental_orbax_use_distributed_process_id, ...). A command imports them in `main`,
# after parsing, so a command line that names a flag not defined yet (or --helpfull) loads
# them before parsing: their flags work, and list, as they did when commands imported them.
_LIBRARIES_WITH_FLAGS = ('array_record.python.array_record_data_source', 'grain',
                         'orbax.checkpoint', 'tensorflow_datasets')


def _load_library_flags(argv: list[str]) -> None:
  app.define_help_flags()  # (app.run defines them too; --help needs no library)
  names = {a.lstrip('-').split('=', 1)[0] for a in argv[1:] if a.startswith('-')}
  unknown = {n for n in names - {'', 'config'} if not n.startswith('config.')
             and n not in flags.FLAGS and n.removeprefix('no') not in flags.FLAGS}
  if unknown or 'helpfull' in names:
    for module in _LIBRARIES_WITH_FLAGS:
      importlib.import_module(module)


def fail(message: str) -> None:
  """Ends the command with one line on stderr and exit status 1."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def guarded(main: Callable[[list[str]], None], *, quiet_logs: int = logging.WARNING
            ) -> Callable[[list[str]], None]:
  """`main` with the command boundary: UserError -> one line, exit 1; Ctrl-C -> exit 130.
  Logging is set to `quiet_logs` unless --verbosity was given (Orbax is chatty at INFO)."""
  def wrapped(argv: list[str]) -> None:
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(quiet_logs)
    try:
      main(argv)
    except UserError as e:
      fail(str(e))
    except KeyboardInterrupt:
      print('interrupted', file=sys.stderr)
      sys.exit(130)
  return wrapped


def run(main: Callable[[list[str]], None], *, flags_parser=None,
        quiet_logs: int = logging.WARNING) -> None:
  """absl's app.run of `main` behind the error boundary. --help shows the command module's
  docstring and flags, whichever spelling started it (lm/__main__.py or a shim)."""
  command = sys.modules[main.__module__]
  sys.modules['__main__'].__doc__ = command.__doc__
  if any(a in ('-h', '--help', '--helpshort', '-?') for a in sys.argv[1:]):
    # (only for help: ml_collections' --config.* override flags would clash with the copies)
    for flag in flags.FLAGS.get_key_flags_for_module(command):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  _load_library_flags(sys.argv)
  kwargs = {'flags_parser': flags_parser} if flags_parser else {}
  app.run(guarded(main, quiet_logs=quiet_logs), **kwargs)


def no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')


def config_from_flag(holder) -> ConfigDict:
  """The --config flag's ConfigDict with its runtime settings applied (CPU devices before
  jax starts them, the compilation cache); a config file that does not load ends the
  program with one line."""
  try:
    config = config_lib.from_flag(holder)
  except UserError as e:
    fail(str(e))
  from lm import runtime  # jax: only once the flags and the config have loaded
  runtime.apply(config.runtime, config.data.cache_dir)  # devices, compilation cache
  return config
