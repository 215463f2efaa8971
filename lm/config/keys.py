"""Key checks of a ConfigDict against a base config: unknown keys (with the closest known
one), missing keys, and dotted-key access."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import ml_collections

from lm.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def leaves(c: ConfigDict, prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted key, value) for every leaf; nested ConfigDicts are walked, not yielded."""
  for k, v in c.items():
    key = f'{prefix}{k}'
    if isinstance(v, ConfigDict):
      yield from leaves(v, key + '.')
    else:
      yield key, v


def all_keys(c: ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted key, sections included ('model' and 'model.width')."""
  out = []
  for k, v in c.items():
    out.append(f'{prefix}{k}')
    if isinstance(v, ConfigDict):
      out += all_keys(v, f'{prefix}{k}.')
  return out


def get(c: ConfigDict, key: str) -> Any:
  """The value at a dotted key, or None where the path does not exist."""
  node: Any = c
  for part in key.split('.'):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def key_problems(config: ConfigDict, base: ConfigDict) -> list[str]:
  """Keys of `config` that `base` lacks (with a suggestion) and keys of `base` it lacks."""
  known = all_keys(base)
  known_set = set(known)
  have = all_keys(config)
  have_sections = {k for k in have if isinstance(get(config, k), ConfigDict)}
  have_set = set(have)
  problems = []
  for key in have:
    parent = key.rpartition('.')[0]
    if key in known_set or (parent and parent not in known_set):
      continue  # known, or inside an unknown section already reported
    siblings = [k for k in known if k.rpartition('.')[0] == parent]
    close = closest(key, siblings) or closest(key, known)  # same section first, then anywhere
    hint = f"did you mean '{close}'?" if close else (
        f"known keys here: {', '.join(k.rpartition('.')[2] for k in siblings)}.")
    problems.append(f"unknown key '{key}' (not in configs/default.py); {hint} "
                    'New settings must be added to configs/default.py (and '
                    'lm/config/sections/) first.')
  for key in known:
    parent = key.rpartition('.')[0]
    if key not in have_set and (not parent or parent in have_sections):
      problems.append(f"missing key '{key}'; start the config from configs.default.get_config() "
                      'and override fields instead of building a new ConfigDict.')
  return problems


def check_known_keys(config: ConfigDict, base: ConfigDict) -> None:
  """Raises ConfigError for keys that `base` lacks or has extra."""
  problems = key_problems(config, base)
  if problems:
    raise ConfigError(problems)


def closest(key: str, candidates: list[str]) -> str | None:
  """The candidate whose last name part is most like `key`'s (difflib), if any is close."""
  by_leaf: dict[str, str] = {}
  for k in candidates:
    by_leaf.setdefault(k.rpartition('.')[2], k)
  match = difflib.get_close_matches(key.rpartition('.')[2], list(by_leaf), n=1, cutoff=0.6)
  return by_leaf[match[0]] if match else None
