"""Generation evaluation: continuations with lm.infer.Decoder, then BLEU and ROUGE.

`generate` is shared with the lm-eval adapter: prompts are encoded with the run's
tokenizer after a bos, cut from the left so that prompt + max_new_tokens fits the
model's max_len, decoded in batches (greedy by default) and each continuation is cut
before the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lm.errors import InputError
from lm.eval import metrics
from lm.eval.records import EvalInputError, fill, text_field
from lm.infer import Decoder, SamplingConfig

GREEDY = SamplingConfig(temperature=0.0)


class Generator:
  """Batched text continuations of one run; compiled pieces are kept between calls."""

  def __init__(self, run, batch_size: int = 8):
    if batch_size < 1:
      raise InputError(f'batch_size={batch_size} must be >= 1')
    self.run, self.batch_size = run, batch_size
    self.max_len = run.model_def.cfg.max_len
    self.decoder = Decoder(run.model_def, cache_len=self.max_len)

  def prompt_ids(self, prompt: str, max_new_tokens: int) -> list[int]:
    """bos + the prompt's ids, the oldest dropped so that max_new_tokens more fit."""
    if max_new_tokens >= self.max_len:
      raise InputError(f'max_new_tokens={max_new_tokens} leaves no room for a prompt in the '
                       f'model max_len {self.max_len}; ask for fewer tokens')
    tok = self.run.tokenizer
    return ([tok.bos_id] + tok.encode(prompt))[-(self.max_len - max_new_tokens):]

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
               stop: Sequence[str] = (), sampling: SamplingConfig = GREEDY,
               seed: int = 0) -> list[str]:
    """The continuation of every prompt (without the prompt), cut before a stop string;
    a continuation also ends at the tokenizer's eos (the end of a document)."""
    if max_new_tokens < 1:
      raise InputError(f'max_new_tokens={max_new_tokens} must be >= 1')
    tok = self.run.tokenizer
    stop = [s for s in stop if s]
    ids = [self.prompt_ids(p, max_new_tokens) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together
    texts = [''] * len(ids)
    for start in range(0, len(order), self.batch_size):
      picked = order[start:start + self.batch_size]
      generated: list[list[int]] = [[] for _ in picked]
      for step_B in self.decoder.stream(self.run.params, [ids[i] for i in picked],
                                        max_new_tokens=max_new_tokens, sampling=sampling,
                                        seed=seed, stop_tokens=[[tok.eos_id]],
                                        stop_texts=stop, detokenize=tok.decode):
        for b in np.flatnonzero(step_B >= 0):
          generated[b].append(int(step_B[b]))
      for b, i in enumerate(picked):
        text = tok.decode(generated[b])
        cut = min((text.find(s) for s in stop if s in text), default=len(text))
        texts[i] = text[:cut]
    return texts


def generation_task(run, records: Sequence[tuple[str, dict[str, Any]]], *, source_field: str,
                    reference_field: str, template: str = '', max_new_tokens: int = 64,
                    stop: Sequence[str] = (), batch_size: int = 8,
                    generator: Generator | None = None) -> dict[str, Any]:
  """Greedy continuations of each record's prompt scored against its reference:
  corpus BLEU and mean ROUGE-1/2/L F-measures (0..100). Returns the metrics and, under
  'samples', every prompt, prediction and reference. A `generator` built before (for this
  run) saves compiling another."""
  prompts, references = [], []
  for where, record in records:
    source = text_field(record, source_field, where)
    references.append(text_field(record, reference_field, where).strip())
    prompts.append(fill(template, record, where) if template else source)
  if not all(references):
    raise EvalInputError(f'{records[references.index("")][0]}: the reference '
                         f'({reference_field!r}) is empty; every record needs one')
  generator = generator or Generator(run, batch_size)
  predictions = generator.generate(prompts, max_new_tokens=max_new_tokens, stop=stop)
  hypotheses = [p.strip() for p in predictions]
  scores = {'bleu': metrics.bleu(hypotheses, references),
            **metrics.rouge(hypotheses, references)}
  samples = [{'prompt': p, 'prediction': h, 'reference': r}
             for p, h, r in zip(prompts, hypotheses, references, strict=True)]
  return {**scores, 'examples': len(records), 'max_new_tokens': max_new_tokens,
          'stop': list(stop), 'samples': samples}
