"""Flax NNX Transformer: `Transformer(ModelConfig, rngs=...)(tokens) -> logits`; `ModelDef`
turns pure parameter dicts back into the module."""

from lm.model.config import ModelConfig
from lm.model.definition import ModelDef, to_pure
from lm.model.transformer import Transformer

__all__ = ['ModelConfig', 'ModelDef', 'Transformer', 'to_pure']
