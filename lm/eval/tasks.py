"""The evaluation tasks of `python -m lm evaluate`, as one call on a loaded run.

    run = load_run('workdirs/x', mesh='run')
    result = evaluate(run, 'perplexity', {'overrides': {'source': 'text', 'path': 'f.txt'}})
    report.write('workdirs/x', 'perplexity', result)

Tasks (docs/evaluation.md): perplexity (lm.eval.perplexity), generation (BLEU/ROUGE of
greedy continuations), classification (the run's head, or zero-shot label scoring), and
lm_eval (lm-evaluation-harness tasks; needs the `eval` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TASKS = ('perplexity', 'generation', 'classification', 'lm_eval')


def evaluate(run, task: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Runs one task; returns {'task', 'checkpoint', 'metrics', 'samples'?}.

  options: perplexity: overrides, split_name, eval_batches; generation: records,
  source_field, reference_field, template, max_new_tokens, stop, batch_size;
  classification: records, labels, text_field_name, label_field, template, label_prefix,
  batch_size; lm_eval: tasks, include, num_fewshot, limit, batch_size."""
  options = dict(options)
  # each task's module is imported in its branch (jax, flax, the data pipeline), so that
  # `python -m lm.evaluate` checks its flags and inputs before they load
  if task == 'perplexity':
    from lm.eval.perplexity import perplexity
    metrics = perplexity(run, **options)
  elif task == 'generation':
    from lm.eval.generation import generation_task
    metrics = generation_task(run, options.pop('records'), **options)
  elif task == 'classification':
    from lm.eval.classification import HeadLabels, ZeroShotLabels, classification_task
    labels, prefix = options['labels'], options.pop('label_prefix', ' ')
    batch_size = options.pop('batch_size', 8)
    predictor = (HeadLabels(labels, batch_size=batch_size)  # the run's own head
                 if run.model_def.cfg.num_classes else
                 ZeroShotLabels(labels, label_prefix=prefix, batch_size=batch_size))
    metrics = classification_task(run, options.pop('records'), predict_labels=predictor,
                                  **options)
  elif task == 'lm_eval':
    from lm.eval.harness import LmJax, run_lm_eval  # optional: needs lm-eval (the eval extra)
    model = LmJax(run=run, batch_size=options.pop('batch_size', 8))
    metrics = run_lm_eval(model, options.pop('tasks'), **options)
  else:
    raise ValueError(f'unknown task {task!r}; expected one of {", ".join(TASKS)}')
  samples = metrics.pop('samples', None) if isinstance(metrics, dict) else None
  result = {'task': task, 'checkpoint': {'workdir': str(run.workdir), 'step': run.step},
            'metrics': metrics}
  if samples is not None:
    result['samples'] = samples
  return result
