"""Evaluation inputs: JSONL records with named fields, and prompt templates over them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from lm.errors import InputError

EvalInputError = InputError  # bad evaluation input (file, field, flag): names it and the fix


def read_jsonl(path: str | os.PathLike, fields: Sequence[str], *,
               flag: str = '--jsonl') -> list[tuple[str, dict[str, Any]]]:
  """(where, record) of each record in a JSONL file (one JSON object per non-blank line),
  each holding every field in `fields`; `where` is 'file:line' for later error messages."""
  path = os.fspath(path)
  if not path:
    raise EvalInputError(f'{flag} is required: a JSONL file with fields {", ".join(fields)}')
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().split('\n')
  except OSError as e:
    raise EvalInputError(f'{flag}={path}: cannot read it ({e.strerror or e})') from e
  except UnicodeDecodeError as e:
    raise EvalInputError(f'{flag}={path}: not UTF-8 text ({e})') from e
  records = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise EvalInputError(f'{path}:{lineno}: not valid JSON ({e.msg}); each line must be one '
                           'JSON object') from None
    if not isinstance(record, dict):
      raise EvalInputError(f'{path}:{lineno}: a JSON {type(record).__name__}, not an object')
    missing = [name for name in fields if name not in record]
    if missing:
      raise EvalInputError(f'{path}:{lineno}: no field {missing[0]!r} (it has '
                           f'{", ".join(map(repr, record)) or "no fields"}); add it or name the '
                           'field that holds it with the matching --*_field flag')
    records.append((f'{path}:{lineno}', record))
  if not records:
    raise EvalInputError(f'{flag}={path} holds no records; write one JSON object per line')
  return records


def text_field(record: dict[str, Any], name: str, where: str) -> str:
  """record[name] as a string (numbers are formatted); other types are an error."""
  value = record[name]
  if isinstance(value, str):
    return value
  if isinstance(value, int | float) and not isinstance(value, bool):
    return str(value)
  raise EvalInputError(f'{where}: field {name!r} is a {type(value).__name__}, expected text')


def fill(template: str, record: dict[str, Any], where: str) -> str:
  """`template` with {field} replaced by the record's fields (str.format)."""
  try:
    return template.format_map(record)
  except KeyError as e:
    raise EvalInputError(f'{where}: --template names field {e.args[0]!r}, which the record '
                         f'lacks (it has {", ".join(map(repr, record))})') from None
  except (ValueError, IndexError) as e:
    raise EvalInputError(f'--template={template!r} is not a valid format string ({e}); write '
                         'fields as {name} and literal braces as {{ }}') from None
