"""What int8 costs and saves: float vs int8 validation perplexity of a trained run (the library
half of `python -m lm quantize`); the quantization itself is lm.model.quantize."""

from __future__ import annotations

import dataclasses
import os

from lm.eval.perplexity import perplexity
from lm.eval.scoring import placement
from lm.model.quantize import quantize, weight_bytes
from lm.run import load_run, place_params


def compare_perplexity(workdir: str | os.PathLike, step: int | None = None,
                       num_batches: int | None = None, mode: str = 'int8') -> dict:
  """{'step', 'float': metrics, mode: metrics} of a run's checkpoint: eval/loss,
  eval/perplexity, eval/bits_per_byte on the same validation rows for both (the
  train.eval_batches batches training evaluates on unless `num_batches` is given) and
  weight_bytes."""
  run = load_run(workdir, step, mesh=placement())
  batches = run.config.train.eval_batches if num_batches is None else num_batches
  qdef, qparams = quantize(run.model_def, run.params, mode)
  if run.mesh is not None:
    qparams = place_params(qdef, qparams, run.mesh, run.rules)
  quantized = dataclasses.replace(run, model_def=qdef, params=qparams)
  result = {'step': run.step}
  for name, r in (('float', run), (mode, quantized)):
    m = perplexity(r, eval_batches=batches)
    result[name] = {'eval/loss': m['loss'], 'eval/perplexity': m['perplexity'],
                    'eval/bits_per_byte': m['bits_per_byte'],
                    'weight_bytes': weight_bytes(r.params)}
  return result
