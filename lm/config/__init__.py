"""The experiment config: loaded from a file or flag, checked once at start-up through its
typed sections, derived values filled in, and (de)serialized.

The ConfigDict (configs/default.py, `--config.x=...` flags, a workdir's config.json) is the
format users write; `typed(config)` is its typed view, one frozen dataclass per section
(lm/config/sections/), and the checks run on it: unknown or missing keys, wrong types,
values out of range, fields that disagree with each other or with the device count. Every
problem names the dotted key and what would fix it, and all are reported at once.

  load.py      files, the --config flag, JSON, the upgrade of older runs' configs
  keys.py      unknown and missing keys
  fields.py    field types and rules, and the generic checks they drive
  sections/    the typed sections (a file per group), each with its own checks
  checks.py    checks between sections; typed, validate, resolve
  overrides.py dotted-key overrides ({'train.steps': 100}) of a ConfigDict
"""

from __future__ import annotations

from lm.config import fields, keys
from lm.config.checks import TASK_FORMATS, resolve, typed, validate
from lm.config.load import (
                            ConfigDict,
                            default_config,
                            define_config_flag,
                            fill_new_keys,
                            from_flag,
                            from_json,
                            load_file,
                            to_json,
)
from lm.config.overrides import override
from lm.config.sections import (
                                LORA_TARGETS,
                                MIN_SENTENCEPIECE_VOCAB,
                                REFERENCE_FREE_LOSSES,
                                WEIGHT_DECAY_KINDS,
                                Checkpoint,
                                Config,
                                Data,
                                Lora,
                                Mesh,
                                Model,
                                MoE,
                                Optimizer,
                                Runtime,
                                Tokenizer,
                                Train,
)
from lm.errors import ConfigError
from lm.parallel.axes import LOGICAL_AXES, MESH_AXES

# {dotted key: its choices}, from the sections' Literal fields
ENUMS: dict[str, tuple[str, ...]] = fields.choices(Config)
POSITIVE_INTS = fields.keys_with_rule(Config, 'positive', int)
NON_NEGATIVE_INTS = fields.keys_with_rule(Config, 'non_negative', int)
POSITIVE_FLOATS = fields.keys_with_rule(Config, 'positive', float)
NON_NEGATIVE_FLOATS = fields.keys_with_rule(Config, 'non_negative', float)


def check_known_keys(config: ConfigDict, base: ConfigDict | None = None) -> None:
  """Raises ConfigError for keys that `base` (default: configs/default.py) lacks or has extra."""
  keys.check_known_keys(config, base if base is not None else default_config())


__all__ = [
    'ENUMS', 'LOGICAL_AXES', 'LORA_TARGETS', 'MESH_AXES', 'MIN_SENTENCEPIECE_VOCAB',
    'NON_NEGATIVE_FLOATS', 'NON_NEGATIVE_INTS', 'POSITIVE_FLOATS', 'POSITIVE_INTS',
    'REFERENCE_FREE_LOSSES', 'TASK_FORMATS', 'WEIGHT_DECAY_KINDS', 'Checkpoint', 'Config',
    'ConfigDict', 'ConfigError', 'Data', 'Lora', 'Mesh', 'MoE', 'Model', 'Optimizer', 'Runtime',
    'Tokenizer', 'Train', 'check_known_keys',
    'default_config', 'define_config_flag', 'override', 'fill_new_keys', 'from_flag', 'from_json',
    'load_file', 'resolve', 'to_json', 'typed', 'validate',
]
