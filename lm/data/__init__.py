"""Data pipeline: sources -> TFDS ArrayRecord documents -> tokenizer -> packed rows -> Grain.

    prepared = prepare(config.data, seq_len=..., log=print)
    it = prepared.train_iterator(batch_size=..., seed=..., process_index=..., process_count=...)
"""

from lm.data.errors import DataError
from lm.data.prepare import PreparedData, prepare

__all__ = ['DataError', 'PreparedData', 'prepare']
