"""What a typed config section is made of: its fields' types, their value rules, and the
generic checks both drive (types before a section is built, choices and rules after).

A section is a frozen dataclass (lm/config/sections/). A field's annotation is its type
(`int`, `float`, `bool`, `str`, a `tuple[...]`, or a `Literal[...]` of its choices, or
another section); `positive()`, `non_negative()` and `in_range()` attach a value rule; a
section's `problems()` holds the checks between its own fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal

import ml_collections

from lm.config.load import lists_to_tuples

ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Rule:
  """A value rule: `test(value)` holds, else '<key>=<value> <text>'."""
  kind: str  # 'positive' | 'non_negative' | 'range'
  test: Callable[[Any], bool]
  text: str


def positive() -> Any:
  """A size or count: >= 1 for an int field, > 0 for a float field (set by `rule_of`)."""
  return dataclasses.field(metadata={'rule': 'positive'})


def non_negative(note: str = '') -> Any:
  """>= 0; `note` says what 0 means, e.g. ' (0: all documents)'."""
  return dataclasses.field(metadata={'rule': Rule('non_negative', lambda v: v >= 0,
                                                  f'must be >= 0{note}.')})


def in_range(lo: float, hi: float, *, lo_inclusive: bool) -> Any:
  """lo < value < hi (lo <= value < hi with lo_inclusive)."""
  text = f"{'0 <=' if lo_inclusive else '0 <'} value < 1" if (lo, hi) == (0, 1) else (
      f"{lo} {'<=' if lo_inclusive else '<'} value < {hi}")
  return dataclasses.field(metadata={'rule': Rule(
      'range', lambda v: (lo <= v if lo_inclusive else lo < v) and v < hi,
      f'is out of range; it must satisfy {text}.')})


class Section:
  """Base of the typed sections: `problems()` yields the checks between its own fields."""

  def problems(self) -> Iterator[str]:
    return iter(())

  def file_problems(self) -> Iterator[str]:
    """Checks that look at this machine's files (paths that must exist)."""
    return iter(())


@functools.cache
def hints(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
  return isinstance(tp, type) and issubclass(tp, Section)


def rule_of(f: dataclasses.Field, tp: Any) -> Rule | None:
  rule = f.metadata.get('rule')
  if rule == 'positive':
    if tp is int:
      return Rule('positive', lambda v: v >= 1, 'must be a positive integer.')
    return Rule('positive', lambda v: v > 0, 'must be > 0.')
  return rule


def walk(cls: type, prefix: str = '') -> Iterator[tuple[str, dataclasses.Field, Any]]:
  """(dotted key, field, annotation) of every leaf field of section `cls` and its subsections."""
  for f in dataclasses.fields(cls):
    tp = hints(cls)[f.name]
    if is_section(tp):
      yield from walk(tp, f'{prefix}{f.name}.')
    else:
      yield f'{prefix}{f.name}', f, tp


def _type_ok(value: Any, tp: Any) -> bool:
  if typing.get_origin(tp) is Literal:
    tp = type(typing.get_args(tp)[0])
  if typing.get_origin(tp) is tuple:
    return isinstance(value, (tuple, list))
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, tp)


def _type_name(tp: Any) -> str:
  if typing.get_origin(tp) is Literal:
    return type(typing.get_args(tp)[0]).__name__
  if typing.get_origin(tp) is tuple:
    return 'tuple'
  return 'int or float' if tp is float else tp.__name__


def type_problems(config: ConfigDict, cls: type, defaults: dict[str, Any],
                  prefix: str = '') -> list[str]:
  """Values whose type is not their field's (keys the section lacks are for `key_problems`);
  `defaults` are the default values by dotted key, named in the messages."""
  problems = []
  for f in dataclasses.fields(cls):
    key, tp = f'{prefix}{f.name}', hints(cls)[f.name]
    if f.name not in config:
      continue
    value = config[f.name]
    if is_section(tp):
      if isinstance(value, ConfigDict):
        problems += type_problems(value, tp, defaults, key + '.')
      else:
        problems.append(f"'{key}' must be a section (ConfigDict) as in configs/default.py, "
                        f'got {type(value).__name__} {value!r}')
    elif isinstance(value, ConfigDict):
      problems.append(f"'{key}' must be a value like the default {defaults.get(key)!r}, "
                      'not a section.')
    elif not _type_ok(value, tp):
      problems.append(f'{key}={value!r} has type {type(value).__name__}; it must be '
                      f'{_type_name(tp)} (the default is {defaults.get(key)!r}).')
  return problems


def build(cls: type, config: ConfigDict) -> Any:
  """The section `cls` of a ConfigDict that has its keys and types (lists become tuples)."""
  values = {}
  for f in dataclasses.fields(cls):
    tp, value = hints(cls)[f.name], config[f.name]
    if is_section(tp):
      value = build(tp, value)
    elif tp is float:
      value = float(value)
    elif typing.get_origin(tp) is tuple:
      value = lists_to_tuples(value)
    values[f.name] = value
  return cls(**values)


def value_problems(section: Any, prefix: str = '') -> tuple[list[str], bool]:
  """(problems, sizes_ok): every field's choices and rules, then each section's own checks
  (skipped when a positive int is not, since those checks divide by them)."""
  problems: list[str] = []
  sizes_ok = True
  sections = [(prefix, section)]
  for pre, s in sections:
    for f in dataclasses.fields(s):
      key, tp, value = f'{pre}{f.name}', hints(type(s))[f.name], getattr(s, f.name)
      if is_section(tp):
        sections.append((key + '.', value))
        continue
      if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
        allowed = typing.get_args(tp)
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        problems.append(f'{key}={value!r} is not one of {", ".join(map(repr, allowed))}{hint}.')
      rule = rule_of(f, tp)
      if rule and not rule.test(value):
        problems.append(f'{key}={value} {rule.text}')
        sizes_ok = sizes_ok and not (rule.kind == 'positive' and tp is int)
  if sizes_ok:
    for _, s in sections:
      problems += s.problems()
  return problems, sizes_ok


def file_problems(section: Any) -> list[str]:
  """Every section's `file_problems()`, outermost first."""
  problems = list(section.file_problems())
  for f in dataclasses.fields(section):
    if is_section(hints(type(section))[f.name]):
      problems += file_problems(getattr(section, f.name))
  return problems


def choices(cls: type) -> dict[str, tuple]:
  """{dotted key: its choices} of every Literal field."""
  return {key: typing.get_args(tp) for key, _, tp in walk(cls)
          if typing.get_origin(tp) is Literal}


def keys_with_rule(cls: type, kind: str, tp: Any) -> tuple[str, ...]:
  """Dotted keys of the `tp` fields whose rule is `kind` (e.g. the positive ints)."""
  return tuple(key for key, f, t in walk(cls) if t is tp and (r := rule_of(f, t)) and
               r.kind == kind)
