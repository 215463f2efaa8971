"""Training: optimizer, train state, jit'd steps and the loop (`train(config, workdir)`)."""

from lm.train.loop import Trainer, TrainingDiverged, train

__all__ = ['Trainer', 'TrainingDiverged', 'train']
