"""Evaluation results on disk: <workdir>/eval/<task>.json, <task>.md and, for tasks with
per-example outputs, <task>.samples.jsonl."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from etils import epath

from lm import workdir as workdir_lib


def write(workdir: str | os.PathLike, task: str, result: dict[str, Any]) -> dict[str, epath.Path]:
  """Writes the task's result (samples go to their own file); returns the paths written."""
  out_dir = workdir_lib.eval_dir(workdir)
  out_dir.mkdir(parents=True, exist_ok=True)
  result = dict(result)
  samples = result.pop('samples', None)
  paths = {'json': out_dir / f'{task}.json', 'md': out_dir / f'{task}.md'}
  workdir_lib.write_text(paths['json'], json.dumps(result, indent=1, default=str) + '\n')
  workdir_lib.write_text(paths['md'], markdown(task, result))
  if samples is not None:
    paths['samples'] = out_dir / f'{task}.samples.jsonl'
    workdir_lib.write_text(paths['samples'],
                           ''.join(json.dumps(s, ensure_ascii=False) + '\n' for s in samples))
  return paths


def markdown(task: str, result: dict[str, Any]) -> str:
  """A markdown page: the scalar metrics as a table, then per-class scores and the
  confusion matrix (classification) or a table per lm-eval task (lm_eval)."""
  head = result.get('checkpoint', {})
  lines = [f'# {task}', '']
  if head:
    lines += [f'{head.get("workdir", "")} at step {head.get("step", "")}', '']
  scalars = {k: v for k, v in result.get('metrics', {}).items() if _is_scalar(v)}
  if scalars:
    lines += ['| metric | value |', '| --- | --- |']
    lines += [f'| {k} | {_fmt(v)} |' for k, v in scalars.items()]
    lines.append('')
  m = result.get('metrics', {})
  if 'domains' in m:
    lines += ['| domain | loss | perplexity | bits/byte | tokens |',
              '| --- | --- | --- | --- | --- |']
    lines += [f'| {name} | {_fmt(d["loss"])} | {_fmt(d["perplexity"])} | '
              f'{_fmt(d["bits_per_byte"])} | {d["tokens"]} |' for name, d in m['domains'].items()]
    lines.append('')
  if 'per_class' in m:
    lines += ['| label | precision | recall | f1 | support |', '| --- | --- | --- | --- | --- |']
    lines += [f'| {name} | {_fmt(s["precision"])} | {_fmt(s["recall"])} | {_fmt(s["f1"])} | '
              f'{s["support"]} |' for name, s in m['per_class'].items()]
    lines += ['', 'Confusion matrix (rows: gold, columns: predicted)', '',
              '| gold \\ predicted | ' + ' | '.join(m['labels']) + ' |',
              '| --- |' + ' --- |' * len(m['labels'])]
    lines += [f'| {name} | ' + ' | '.join(str(c) for c in row) + ' |'
              for name, row in zip(m['labels'], m['confusion_matrix'], strict=True)]
    lines.append('')
  if 'results' in m:
    lines += ['| task | metric | value |', '| --- | --- | --- |']
    for name, values in m['results'].items():
      lines += [f'| {name} | {k} | {_fmt(v)} |' for k, v in values.items()
                if _is_scalar(v) and k not in ('name', 'alias')]
    lines.append('')
  return '\n'.join(lines)


def _is_scalar(v: Any) -> bool:
  return isinstance(v, int | float | str) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return 'nan' if math.isnan(v) else f'{v:.4f}'
  return str(v)

