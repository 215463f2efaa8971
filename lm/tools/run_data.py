"""A trained run's own data, prepared from its config with the run's saved tokenizer: what
scoring it on the batches training evaluated on needs (lm.api's Run.evaluate, lm.tools.btm).
"""

from __future__ import annotations

from collections.abc import Callable

from lm.config import ConfigDict
from lm.data import mixture, supervised
from lm.data.tokenizers import Tokenizer
from lm.workdir import check_same_tokenizer


def run_data(config: ConfigDict, tokenizer: Tokenizer, log: Callable[[str], None] = print,
             where: str = 'the run'):
  """sft/classify records are tokenized with `tokenizer`; packed text (which lm.data
  tokenizes as it prepares it, from its cache when it can) must come out of the same
  tokenizer, else a DataError names `where` (the run)."""
  if config.data.format != 'text':
    return supervised.prepare(config.data, seq_len=config.data.seq_len, tokenizer=tokenizer,
                              log=log)
  data = mixture.prepare_data(config.data, seq_len=config.data.seq_len, log=log)
  check_same_tokenizer(tokenizer, data.tokenizer, data.val_text_sample(4000), where)
  return data
