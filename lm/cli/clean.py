"""`python -m lm clean --config=configs/clean.py [--config.clean.<key>=<value>]`: the cleaning
pipeline (lm/data/clean/): raw text/JSONL/Parquet/WARC files -> normalised, language- and
quality-filtered, PII-scrubbed, deduplicated, decontaminated documents in the TFDS
ArrayRecord store that `data.source='cleaned'`, `data.path=<clean.output>` trains on, with
removed/ (each removed document and its reason) and report/ beside it.

A rerun after a crash skips the finished shards; --workers overrides clean.workers.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags

from lm import cli
from lm import config as config_lib
from lm.data.clean import config as clean_config

_DEFAULT_CONFIG = 'configs/clean.py'
if not any(re.match(r'^--?config(=|$)', a) for a in sys.argv[1:]):
  # As lm/cli/train.py: the default loads (and --config.* overrides apply) in flag parsing.
  sys.argv.insert(1, f'--config={_DEFAULT_CONFIG}')

_CONFIG = config_lib.define_config_flag(
    'config', _DEFAULT_CONFIG, 'the cleaning config (configs/clean.py); '
    '--config.clean.<key>=<value> overrides one field, e.g. --config.clean.input=DIR.')
_WORKERS = flags.DEFINE_integer('workers', None, 'processes running the shards (overrides '
                                'clean.workers; the output is the same for any number).')
_OUTPUT = flags.DEFINE_string('output', None, 'the cleaned dataset directory (overrides '
                              'clean.output).')


def main(argv: list[str]) -> None:
  del argv
  config = config_lib.from_flag(_CONFIG)
  with config.unlocked():
    if _WORKERS.value is not None:
      config.clean.workers = _WORKERS.value
    if _OUTPUT.value is not None:
      config.clean.output = _OUTPUT.value
  clean = clean_config.check(config)
  from lm.data.clean import pipeline  # datatrove and the data pipeline: once the config is checked
  meta = pipeline.clean(clean)
  print(f'cleaned: {meta["counts"]["kept_docs"]} of {meta["counts"]["input_docs"]} documents '
        f'kept; train with --config.data.source=cleaned '
        f'--config.data.path={meta["config"]["output"]}')


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a --config.clean.<key> override naming a key the config lacks
  ends the run with one line naming it and the valid keys, instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override names no config field
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]  # the KeyError inside the AttributeError
    name = str(e.args[0] if e.args else e).partition('\n')[0].strip('\'"')
    given = [a.lstrip('-').split('=', 1)[0].removeprefix('config.') for a in argv[1:]
             if a.lstrip('-').startswith('config.')]
    # The override whose path holds the missing name, cut just after it.
    key = next((g.split(name)[0] + name for g in given if name in g.split('.')), name)
    print(f'error: --config.{key}: {clean_config.unknown_key(key)}', file=sys.stderr)
    sys.exit(1)


def run() -> None:
  cli.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
