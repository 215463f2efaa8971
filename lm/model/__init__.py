"""Flax NNX Transformer: `Transformer(ModelConfig, rngs=...)(tokens) -> logits`."""

from lm.model.config import ModelConfig
from lm.model.transformer import Transformer

__all__ = ['ModelConfig', 'Transformer']
