"""Log-likelihoods of continuations under a trained run's model, batched and jit-compiled.

A request is a pair of token lists (context, continuation): the model reads
context + continuation[:-1] and the continuation's tokens are scored. Sequences longer
than the model's max_len + 1 tokens lose their oldest context tokens (left truncation);
a continuation itself may hold at most max_len tokens. Text helpers put the tokenizer's
bos in front of every context, as every training document starts with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lm import parallel
from lm.errors import InputError
from lm.infer.sharding import decode_mesh

LENGTH_BUCKET = 16  # rows are padded to a multiple of this: few distinct compiles


def placement() -> str | None:
  """Where evaluation loads a run (lm.run.load_run's `mesh`): the run's own mesh fitted to
  the devices here, or, with one device, simply that device."""
  return None if jax.device_count() == 1 else 'run'


def eval_mesh(run) -> Mesh:
  """The mesh the run's parameters are on: its own (load_run(mesh=...)), or a one-device
  mesh over the device that holds them (load_run's default placement)."""
  if run.mesh is not None:
    return run.mesh
  device = next(iter(jax.tree.leaves(run.params)[0].devices()))
  return decode_mesh(devices=[device])


class Scorer:
  """Sums of continuation log-probs and greedy flags for (context, continuation) pairs."""

  def __init__(self, run, batch_size: int = 8):
    if batch_size < 1:
      raise InputError(f'--batch_size={batch_size} must be >= 1')
    self.run = run
    self.max_len = run.model_def.cfg.max_len
    self.mesh = eval_mesh(run)
    self._batch_sharding = parallel.batch_sharding(self.mesh)
    shards = self.mesh.size // self._batch_sharding.shard_shape((self.mesh.size,))[0]
    self.batch_size = -(-batch_size // shards) * shards  # rows split evenly over the mesh
    self._score = jax.jit(self._score_fn, out_shardings=parallel.replicated(self.mesh))

  def _score_fn(self, params, inputs_BT, targets_BT, mask_BT):
    with parallel.use_rules(self.mesh, parallel.rules_for(self.run.config.mesh)):
      logits_BTV = self.run.model_def.merge(params)(inputs_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    target_logp_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
    return (jnp.sum(jnp.where(mask_BT, target_logp_BT, 0.0), axis=1),
            jnp.all(greedy_BT | ~mask_BT, axis=1))

  def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
                    ) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding yields it) per pair."""
    rows = []
    for i, (context, continuation) in enumerate(pairs):
      if not context:
        raise InputError(f'request {i}: the context is empty; start it with the bos token')
      if len(continuation) > self.max_len:
        raise InputError(f'request {i}: the continuation has {len(continuation)} tokens, more '
                         f'than the model max_len {self.max_len}; score it in pieces')
      tokens = (list(context) + list(continuation))[-(self.max_len + 1):]
      rows.append((tokens, len(continuation)))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths together
    for start in range(0, len(order), self.batch_size):
      picked = order[start:start + self.batch_size]
      longest = max(len(rows[i][0]) - 1 for i in picked)
      t = min(self.max_len, -(-longest // LENGTH_BUCKET) * LENGTH_BUCKET)
      inputs_BT = np.zeros((self.batch_size, t), np.int32)
      targets_BT = np.zeros((self.batch_size, t), np.int32)
      mask_BT = np.zeros((self.batch_size, t), bool)
      for b, i in enumerate(picked):
        tokens, num_scored = rows[i]
        n = len(tokens) - 1
        inputs_BT[b, :n], targets_BT[b, :n] = tokens[:-1], tokens[1:]
        mask_BT[b, n - num_scored:n] = True
      put = lambda x: jax.device_put(x, self._batch_sharding)  # noqa: E731
      sums_B, greedy_B = self._score(self.run.params, put(inputs_BT), put(targets_BT),
                                     put(mask_BT))
      sums_B, greedy_B = np.asarray(sums_B), np.asarray(greedy_B)
      for b, i in enumerate(picked):
        out[i] = (float(sums_B[b]), bool(greedy_B[b]))
    return out

  # ---- text ------------------------------------------------------------------------------

  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) text pair, bos first.

    The continuation's ids are those the joint text has after the context's, so a
    tokenizer that merges across the boundary scores what it would really see; where
    the joint encoding does not start with the context's, each is encoded alone.
    """
    tok = self.run.tokenizer
    context_ids = tok.encode(context)
    joint = tok.encode(context + continuation)
    if joint[:len(context_ids)] == context_ids:
      continuation_ids = joint[len(context_ids):]
    else:
      continuation_ids = tok.encode(continuation)
    return [tok.bos_id] + context_ids, continuation_ids

  def text_loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """`loglikelihood` of text pairs; an empty continuation scores (0.0, True)."""
    encoded = [self.encode_pair(c, x) for c, x in pairs]
    scored = [i for i, (_, x) in enumerate(encoded) if x]
    results = self.loglikelihood([encoded[i] for i in scored])
    out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for i, r in zip(scored, results, strict=True):
      out[i] = r
    return out

  def rolling_loglikelihood(self, texts: Sequence[str]) -> list[float]:
    """Total log-likelihood of each text after bos, every token scored exactly once.

    A text longer than max_len is cut into chunks of max_len tokens; each chunk is
    scored after as much of the preceding text as fits (left truncation), so every
    window but the first sees a full max_len tokens of context.
    """
    tok = self.run.tokenizer
    pairs, owner = [], []
    for i, text in enumerate(texts):
      ids = [tok.bos_id] + tok.encode(text)
      for start in range(1, len(ids), self.max_len):
        pairs.append((ids[max(0, start - self.max_len):start], ids[start:start + self.max_len]))
        owner.append(i)
    totals = [0.0] * len(texts)
    for i, (logp, _) in zip(owner, self.loglikelihood(pairs), strict=True):
      totals[i] += logp
    return totals
