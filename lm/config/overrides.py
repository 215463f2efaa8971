"""Dotted-key overrides of a ConfigDict ({'train.steps': 100}) with every problem named:
what lm.api.load_config and lm.tools.sweep share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lm.config.load import ConfigDict
from lm.errors import ConfigError


def override(config: ConfigDict, values: Mapping[str, Any]) -> ConfigDict:
  """Sets dotted keys of `config` in place (and returns it); an unknown key or a value of the
  wrong type is a ConfigError naming the key."""
  problems = []
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = config
    try:
      for p in parents:
        node = node[p]
      if not isinstance(node, ConfigDict) or leaf not in node:
        raise KeyError(key)
    except (KeyError, TypeError):
      problems.append(f'{key}: no such config key (configs/default.py lists every key)')
      continue
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      problems.append(f'{key}={value!r}: {e}')
  if problems:
    raise ConfigError(problems)
  return config
