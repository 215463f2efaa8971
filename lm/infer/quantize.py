"""Float vs int8 validation perplexity of a trained run (`python -m lm.quantize`); the
quantization itself is lm.model.quantize."""

from __future__ import annotations

from lm import parallel
from lm.model.quantize import quantize, weight_bytes


def compare_perplexity(workdir: str, step: int | None = None, num_batches: int | None = None,
                       mode: str = 'int8') -> dict:
  """{'step', 'float': metrics, mode: metrics} for a training workdir's checkpoint; metrics
  hold eval/loss, eval/perplexity, eval/bits_per_byte (the same validation batches for
  both) and weight_bytes. Used by `python -m lm.quantize`."""
  from lm import api  # the notebook API loads the run, its data and its mesh
  from lm.infer.sharding import shard_params

  run = api.load(workdir, step, log=lambda _: None)
  result = {'step': run.step, 'float': {**run.evaluate(num_batches),
                                        'weight_bytes': weight_bytes(run.params)}}
  qdef, qparams = quantize(run.model_def, run.params, mode)
  qparams = shard_params(qdef, qparams, run.mesh, parallel.rules_for(run.config.mesh))
  quantized = api.Run(config=run.config, workdir=run.workdir, step=run.step, model_def=qdef,
                      params=qparams, data=run.data, mesh=run.mesh)
  result[mode] = {**quantized.evaluate(num_batches), 'weight_bytes': weight_bytes(qparams)}
  return result
