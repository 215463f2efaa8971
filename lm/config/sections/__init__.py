"""The typed config sections: one frozen dataclass per section of configs/default.py.

Field names and nesting are exactly the ConfigDict's (a test checks both ways); defaults
live only in configs/default.py. Each field's annotation is its type and, for a choice, its
`Literal` choices; `positive()` / `non_negative()` / `in_range()` are its value rule; each
section's `problems()` checks its own fields against each other. Checks between sections
are in lm/config/checks.py. Every message names the dotted key and the fix.

  data.py   data, data.tokenizer
  model.py  model, model.moe
  train.py  lora, optimizer, train, checkpoint, runtime
  mesh.py   mesh
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from lm.config.fields import Section
from lm.config.sections.base import frozen
from lm.config.sections.data import MIN_SENTENCEPIECE_VOCAB, STDLIB_SOURCES, Data, Tokenizer
from lm.config.sections.mesh import Mesh
from lm.config.sections.model import Model, MoE
from lm.config.sections.train import (
                                      LORA_TARGETS,
                                      REFERENCE_FREE_LOSSES,
                                      WEIGHT_DECAY_KINDS,
                                      Checkpoint,
                                      Distill,
                                      Dpo,
                                      Lora,
                                      Optimizer,
                                      Runtime,
                                      Train,
                                      dispatch_multiple,
)


@frozen
class Config(Section):
  """The whole config, typed: `lm.config.typed(config_dict)` builds it."""
  seed: int
  init_from: str  # a workdir or checkpoint step directory to start from ('' = random init)
  init_from_opt_state: bool
  data: Data
  model: Model
  lora: Lora
  optimizer: Optimizer
  train: Train
  checkpoint: Checkpoint
  runtime: Runtime
  mesh: Mesh

  def problems(self) -> Iterator[str]:
    if self.init_from_opt_state and not self.init_from:
      yield 'init_from_opt_state=True needs init_from (the run whose optimizer state to take).'

  def file_problems(self) -> Iterator[str]:
    if self.init_from and not os.path.isdir(os.path.expanduser(self.init_from)):
      yield (f'init_from={self.init_from!r} is not a directory; give a training workdir or one '
             'of its checkpoints/<step> directories.')


__all__ = [
    'LORA_TARGETS', 'MIN_SENTENCEPIECE_VOCAB', 'REFERENCE_FREE_LOSSES', 'STDLIB_SOURCES',
    'WEIGHT_DECAY_KINDS',
    'Checkpoint', 'Config', 'Data', 'Distill', 'Dpo', 'Lora', 'Mesh', 'Model', 'MoE',
    'Optimizer', 'Runtime', 'Tokenizer', 'Train', 'dispatch_multiple',
]
