"""`python -m lm evaluate --workdir=DIR --task=TASK [--step=N]`: score a trained run.

Tasks (docs/evaluation.md):
  perplexity      loss, perplexity and bits/byte on the run's validation split, or on
                  any text source (--text_file=F, or --data.source=... --data.path=...);
                  a data.mixture run per domain and overall, an sft run on its responses
  generation      greedy continuations of --jsonl prompts, BLEU and ROUGE-1/2/L
  classification  accuracy, macro P/R/F1, confusion matrix; zero-shot over --labels
  lm_eval         lm-evaluation-harness tasks (--lm_eval_tasks) with our model as 'lm-jax'

Results go to DIR/eval/<name>.json and <name>.md (name: --name, default the task) and are
printed. The workdir is only read, besides DIR/eval/. The run is loaded with
lm.run.load_run (its own config and tokenizer); only perplexity reads text, prepared here
from the run's config.data (or the flags) with the run's tokenizer.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import flags, logging

from lm import cli
from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.eval import report
from lm.eval.records import read_jsonl
from lm.eval.tasks import TASKS, evaluate

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Training workdir (holds config.json and checkpoints/) to evaluate; '
    'required.')
_TASK = flags.DEFINE_enum('task', None, TASKS, 'What to evaluate; required.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the latest.')
_NAME = flags.DEFINE_string(
    'name', None, 'Results file stem under DIR/eval/ (DIR/eval/<name>.json, .md); default: '
    'the task, e.g. to keep two generation sets apart give each a name.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 8, 'Rows per scoring or generation batch (generation, classification, '
    'lm_eval; perplexity uses the run\'s train.batch_size).')

# ---- perplexity --------------------------------------------------------------------------
_TEXT_FILE = flags.DEFINE_string(
    'text_file', None, 'perplexity: a text file (.txt, or .jsonl with data.jsonl_field) to '
    'evaluate on; the same as --data.source=text --data.path=F.')
_DATA_FLAGS = {
    'source': flags.DEFINE_string(
        'data.source', None, "perplexity: 'text' | 'tfds' | 'stdlib'; default: the run's own "
        'data (its prepared validation split).'),
    'path': flags.DEFINE_string(
        'data.path', None, "perplexity: for data.source=text, a file, directory or glob of "
        '.txt/.jsonl files.'),
    'jsonl_field': flags.DEFINE_string(
        'data.jsonl_field', None, 'perplexity: the .jsonl field that holds the text; '
        "default: the run's."),
    'tfds_name': flags.DEFINE_string(
        'data.tfds_name', None, 'perplexity: for data.source=tfds, the TFDS dataset name.'),
    'tfds_split': flags.DEFINE_string(
        'data.tfds_split', None, "perplexity: the TFDS split to read; default: the run's."),
    'tfds_text_feature': flags.DEFINE_string(
        'data.tfds_text_feature', None, "perplexity: the TFDS text feature; default: the run's."),
    'tfds_data_dir': flags.DEFINE_string(
        'data.tfds_data_dir', None, "perplexity: the TFDS data_dir; default: the run's."),
    'max_docs': flags.DEFINE_integer(
        'data.max_docs', None, 'perplexity: read at most this many documents (0 = all).'),
}
_SPLIT = flags.DEFINE_enum(
    'split', None, ['train', 'validation', 'all'], "perplexity: which documents: default "
    "'validation' for the run's own data, 'all' for another source (whose train/validation "
    "split follows the run's data.split and data.val_fraction).")
_EVAL_BATCHES = flags.DEFINE_integer(
    'eval_batches', 0, "perplexity: 0 = every row; N > 0 = the N batches training evaluates "
    "on (run's own validation split only), to compare with the logged eval/loss.")

# ---- generation and classification ---------------------------------------------------------
_JSONL = flags.DEFINE_string(
    'jsonl', None, 'generation / classification: a JSONL file, one JSON object per line.')
_TEMPLATE = flags.DEFINE_string(
    'template', '', 'generation / classification: the prompt as a Python format string over '
    "the record's fields, e.g. 'Review: {text}\\nSentiment:'; default: the source / text field.")
_SOURCE_FIELD = flags.DEFINE_string(
    'source_field', 'source', 'generation: the field that holds the prompt.')
_REFERENCE_FIELD = flags.DEFINE_string(
    'reference_field', 'reference', 'generation: the field that holds the reference text.')
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    'max_new_tokens', 64, 'generation: tokens to generate at most per prompt.')
_STOP = flags.DEFINE_multi_string(
    'stop', [], "generation: end a continuation at this text (not included); escapes such as "
    "'\\n' are decoded; repeatable.")
_TEXT_FIELD = flags.DEFINE_string(
    'text_field', 'text', 'classification: the field that holds the text to classify.')
_LABEL_FIELD = flags.DEFINE_string(
    'label_field', 'label', 'classification: the field that holds the gold label (a name from '
    '--labels or its index).')
_LABELS = flags.DEFINE_list(
    'labels', [], 'classification: the label names, comma-separated (e.g. neg,pos); zero-shot '
    'scoring picks the one most likely after the text.')
_LABEL_PREFIX = flags.DEFINE_string(
    'label_prefix', ' ', 'classification: text put between the text and each label when '
    'scoring it.')

# ---- lm_eval ----------------------------------------------------------------------------------
_LM_EVAL_TASKS = flags.DEFINE_list(
    'lm_eval_tasks', [], 'lm_eval: lm-evaluation-harness task names or task YAML files, '
    'comma-separated.')
_LM_EVAL_INCLUDE = flags.DEFINE_list(
    'lm_eval_include', [], 'lm_eval: directories of extra task YAML files (lm-eval '
    'include_path).')
_NUM_FEWSHOT = flags.DEFINE_integer('num_fewshot', None, "lm_eval: few-shot examples; default: "
                                    "the task's.")
_LIMIT = flags.DEFINE_integer('limit', None, 'lm_eval: evaluate at most this many examples per '
                              'task (for a quick look).')


def _unescape(text: str) -> str:
  """'\\n' -> newline and the like; other characters (non-ASCII included) stay as they are."""
  return text.encode('latin-1', 'backslashreplace').decode('unicode_escape')


def _data_overrides() -> dict[str, Any]:
  overrides = {k: f.value for k, f in _DATA_FLAGS.items() if f.value is not None}
  if _TEXT_FILE.value:
    if overrides.get('source', 'text') != 'text' or 'path' in overrides:
      raise UserError('--text_file is --data.source=text --data.path=F; give one or the other')
    if not os.path.isfile(_TEXT_FILE.value):
      raise UserError(f'--text_file={_TEXT_FILE.value} is not a file')
    overrides.update(source='text', path=_TEXT_FILE.value)
  return overrides


def _check_task_flags(task: str) -> None:
  """Flags of another task are a mistake, not something to ignore silently."""
  own = {
      'perplexity': {'text_file', 'split', 'eval_batches', *(f'data.{k}' for k in _DATA_FLAGS)},
      'generation': {'jsonl', 'template', 'source_field', 'reference_field', 'max_new_tokens',
                     'stop', 'batch_size'},
      'classification': {'jsonl', 'template', 'text_field', 'label_field', 'labels',
                         'label_prefix', 'batch_size'},
      'lm_eval': {'lm_eval_tasks', 'lm_eval_include', 'num_fewshot', 'limit', 'batch_size'},
  }
  others = set().union(*own.values()) - own[task]
  given = sorted(name for name in others if flags.FLAGS[name].present)
  if given:
    raise UserError(f'--task={task} does not use --{", --".join(given)}')


def read_inputs(task: str) -> dict[str, Any]:
  """The task's options (`lm.eval.tasks.evaluate`), read and checked before the model
  loads (a bad file fails fast)."""
  if task == 'generation':
    return {'records': read_jsonl(_JSONL.value or '',
                                  [_SOURCE_FIELD.value, _REFERENCE_FIELD.value]),
            'source_field': _SOURCE_FIELD.value, 'reference_field': _REFERENCE_FIELD.value,
            'template': _TEMPLATE.value, 'max_new_tokens': _MAX_NEW_TOKENS.value,
            'stop': [_unescape(s) for s in _STOP.value], 'batch_size': _BATCH_SIZE.value}
  if task == 'classification':
    if not _LABELS.value:
      raise UserError('--task=classification needs --labels=NAME,NAME,... (e.g. neg,pos)')
    return {'records': read_jsonl(_JSONL.value or '', [_TEXT_FIELD.value, _LABEL_FIELD.value]),
            'labels': _LABELS.value, 'text_field_name': _TEXT_FIELD.value,
            'label_field': _LABEL_FIELD.value, 'template': _TEMPLATE.value,
            'label_prefix': _LABEL_PREFIX.value, 'batch_size': _BATCH_SIZE.value}
  if task == 'lm_eval':
    if not _LM_EVAL_TASKS.value:
      raise UserError('--task=lm_eval needs --lm_eval_tasks=NAME_OR_YAML,...')
    return {'tasks': _LM_EVAL_TASKS.value, 'include': _LM_EVAL_INCLUDE.value,
            'num_fewshot': _NUM_FEWSHOT.value, 'limit': _LIMIT.value,
            'batch_size': _BATCH_SIZE.value}
  return {'overrides': _data_overrides(), 'split_name': _SPLIT.value or '',
          'eval_batches': _EVAL_BATCHES.value}


def main(argv: list[str]) -> None:
  cli.no_arguments(argv)
  if not _WORKDIR.value:
    raise UserError('--workdir is required')
  if not _TASK.value:
    raise UserError(f'--task is required: one of {", ".join(TASKS)}')
  workdir_lib.check_trained(_WORKDIR.value)
  _check_task_flags(_TASK.value)
  options = read_inputs(_TASK.value)
  from lm.eval.scoring import placement  # jax, flax, orbax: once the flags and inputs are checked
  from lm.run import load_run
  run = load_run(_WORKDIR.value, _STEP.value, mesh=placement(),
                 log=lambda s: print(s, file=sys.stderr))
  result = evaluate(run, _TASK.value, options)
  paths = report.write(_WORKDIR.value, _NAME.value or _TASK.value, result)
  print(paths['md'].read_text())
  print(f'[written: {", ".join(str(p) for p in paths.values())}]', file=sys.stderr)


def run() -> None:
  cli.run(main, quiet_logs=logging.ERROR)  # orbax warns that a read-only manager is read-only


if __name__ == '__main__':
  run()
