"""Inference: KV-cache decoding (`Decoder`) and next-token sampling."""

from lm.infer.decode import Decoder, init_cache
from lm.infer.sampling import SamplingConfig, filter_logits, sample

__all__ = ['Decoder', 'SamplingConfig', 'filter_logits', 'init_cache', 'sample']
