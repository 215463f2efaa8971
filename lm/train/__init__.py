"""Training: optimizer, train state, jit'd steps and the loop (`train(config, workdir)`).

The loop's names load on first use, so that a light submodule (metrics, timing) can be
imported without jax, flax and the data pipeline.
"""

from lm import lazy

__all__ = ['Trainer', 'TrainingDiverged', 'train']

__getattr__, __dir__ = lazy.names(__name__, {name: 'loop' for name in __all__})
