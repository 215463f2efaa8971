"""Look inside a trained run: attention maps per layer, per-token losses and predictions.

`inspect_run` loads a run (lm.run.load_run), writes one PNG of attention heatmaps per layer
(a grid of heads) and report.json, and returns the per-position table (token, loss of the
next token, top-k predictions). The layers are run one by one with the model's own Block
modules (Transformer.layer_blocks), dense and MoE alike, so each layer's map sees the
residual stream the model itself computes (the final logits equal model(tokens)).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from lm import workdir as workdir_lib
from lm.errors import UserError
from lm.model import Transformer
from lm.model.attention import attention_mask
from lm.run import load_run

REPORT_FILE = 'report.json'
LABEL_MAX_T = 48  # token labels on the heatmap axes up to this many tokens


class InspectError(UserError):
  """A workdir, text or option lm.inspect cannot use; the message names it and the fix."""


@dataclass
class Trace:
  """One layer-by-layer forward pass of a single sequence of T tokens."""
  maps_LNTT: np.ndarray  # attention probabilities of every layer and query head
  resid_LTD: np.ndarray  # the residual stream entering each block
  logits_TV: np.ndarray  # final logits, equal to model(tokens)[0]


def trace(model: Transformer, tokens_T) -> Trace:
  """Runs `model` on one sequence layer by layer, recording each layer's attention maps."""
  tokens_1T = jnp.asarray(tokens_T, jnp.int32)[None]
  t = tokens_1T.shape[1]
  if t < 1:
    raise InspectError('no tokens to inspect: give a non-empty --text.')
  if t > model.cfg.max_len:
    raise InspectError(f'{t} tokens exceed the model\'s max_len={model.cfg.max_len}; cut the '
                       'text first (inspect.encode does).')
  positions_1T = jnp.arange(t, dtype=jnp.int32)[None]
  mask_11TT = attention_mask(jnp.ones((1, t), jnp.int32), causal=model.cfg.causal)
  x_1TD = model.embed_tokens(tokens_1T, positions_1T)
  maps, resid = [], []
  for block in model.layer_blocks():
    resid.append(np.asarray(x_1TD[0]))
    maps.append(np.asarray(block.attention_probs(x_1TD, positions_1T, mask_11TT)[0]))
    x_1TD, _, _ = block(x_1TD, positions_1T, mask_11TT)
  return Trace(maps_LNTT=np.stack(maps), resid_LTD=np.stack(resid),
               logits_TV=np.asarray(model.logits(x_1TD)[0]))


def attention_maps(model, tokens_T) -> np.ndarray:
  """Attention probabilities [layers, heads, T, T] of one token sequence (rows sum to 1,
  zero above the diagonal)."""
  return trace(model, tokens_T).maps_LNTT


def encode(tokenizer, text: str, max_len: int) -> tuple[list[int], str | None]:
  """The token ids of `text`, cut to the first `max_len`; the note says when it was cut."""
  ids = list(tokenizer.encode(text))
  if not ids:
    raise InspectError(f'--text={text!r} encodes to no tokens: give some text to inspect.')
  if len(ids) > max_len:
    return ids[:max_len], (f'note: the text is {len(ids)} tokens; only the first {max_len} '
                           '(the model\'s max_len) are inspected.')
  return ids, None


def token_label(tokenizer, token_id: int) -> str:
  """A printable form of one token (newlines and tabs escaped)."""
  return tokenizer.decode([int(token_id)]).encode('unicode_escape').decode('ascii')


def token_report(model, tokenizer, text: str, top_k: int = 5) -> list[dict[str, Any]]:
  """Per position: the token, its loss (-log p of the actual next token; None at the last
  position) and the top-k next-token predictions as (token, probability). The text is cut
  to the model's max_len tokens."""
  ids, _ = encode(tokenizer, text, model.cfg.max_len)
  return report_ids(model, tokenizer, ids, top_k)


def report_ids(model, tokenizer, ids: list[int], top_k: int = 5) -> list[dict[str, Any]]:
  """token_report over token ids (at most max_len of them)."""
  if top_k < 1:
    raise InspectError(f'top_k={top_k} must be >= 1.')
  logits_TV = model(jnp.asarray(ids, jnp.int32)[None])[0]
  logp_TV = np.asarray(jax.nn.log_softmax(logits_TV.astype(jnp.float32), axis=-1))
  k = min(top_k, logp_TV.shape[-1])
  rows = []
  for i, tok in enumerate(ids):
    top_V = np.argsort(-logp_TV[i], kind='stable')[:k]
    rows.append({
        'position': i, 'token_id': int(tok), 'token': token_label(tokenizer, tok),
        'loss': float(-logp_TV[i, ids[i + 1]]) if i + 1 < len(ids) else None,
        'top_k': [{'token_id': int(v), 'token': token_label(tokenizer, v),
                   'prob': float(np.exp(logp_TV[i, v]))} for v in top_V],
    })
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """The report as a plain-text table."""
  width = max([5] + [len(r['token']) for r in rows])
  lines = [f'{"pos":>4}  {"token":<{width}}  {"loss":>7}  top-k next tokens (p)']
  for r in rows:
    loss = '' if r['loss'] is None else f'{r["loss"]:.3f}'
    preds = '  '.join(f"'{p['token']}' {p['prob']:.3f}" for p in r['top_k'])
    lines.append(f'{r["position"]:>4}  {r["token"]:<{width}}  {loss:>7}  {preds}')
  return '\n'.join(lines)


def parse_layers(spec: str, num_layers: int) -> list[int]:
  """'all' or comma-separated layer indices ('0,2'); each must be in [0, num_layers)."""
  if spec.strip() == 'all':
    return list(range(num_layers))
  try:
    layers = [int(s) for s in spec.split(',') if s.strip()]
  except ValueError as e:
    raise InspectError(f'--layers={spec!r}: expected "all" or indices like "0,1".') from e
  bad = [i for i in layers if not 0 <= i < num_layers]
  if not layers or bad:
    raise InspectError(f'--layers={spec!r}: the model has layers 0..{num_layers - 1}.')
  return layers


def plot_layer(maps_NTT: np.ndarray, labels: list[str], title: str, out: Path) -> Path:
  """One PNG: a grid of heads' attention heatmaps (query rows, key columns)."""
  n, t, _ = maps_NTT.shape
  cols = min(n, 4)
  rows = math.ceil(n / cols)
  size = 3.0 + 0.12 * t if t <= LABEL_MAX_T else 4.0
  # A bare Figure (no pyplot): headless, and the caller's matplotlib backend is left alone.
  fig = Figure(figsize=(size * cols + 1, size * rows + 0.5), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  for h, ax in enumerate(axes.flat):
    if h >= n:
      ax.axis('off')
      continue
    image = ax.imshow(maps_NTT[h], cmap='viridis', vmin=0.0, vmax=1.0, interpolation='nearest')
    ax.set_title(f'head {h}', fontsize='small')
    if t <= LABEL_MAX_T:
      ax.set_xticks(range(t), labels, rotation=90, fontsize=6)
      ax.set_yticks(range(t), labels, fontsize=6)
    ax.set_xlabel('key')
    ax.set_ylabel('query')
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
  fig.suptitle(title)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  return out


def inspect_run(workdir: str | os.PathLike, text: str, out_dir: str | os.PathLike | None = None,
                top_k: int = 5, layers: str = 'all', step: int | None = None
                ) -> tuple[list[dict[str, Any]], list[Path], Path, str | None]:
  """Loads the run in `workdir`, writes heatmaps and report.json to `out_dir` (default
  <workdir>/inspect); returns (report rows, PNG paths, out_dir, truncation note or None)."""
  if top_k < 1:
    raise InspectError(f'--top_k={top_k} must be >= 1.')
  run = load_run(workdir, step)
  model, tokenizer = run.model, run.tokenizer
  chosen = parse_layers(layers, model.cfg.num_layers)
  ids, note = encode(tokenizer, text, model.cfg.max_len)
  maps_LNTT = attention_maps(model, ids)
  labels = [token_label(tokenizer, i) for i in ids]
  out = Path(out_dir) if out_dir else Path(workdir_lib.name(workdir)) / 'inspect'
  out.mkdir(parents=True, exist_ok=True)
  pngs = [plot_layer(maps_LNTT[i], labels, f'layer {i} attention (step {run.step})',
                     out / f'attention_layer{i:02d}.png') for i in chosen]
  rows = report_ids(model, tokenizer, ids, top_k)
  (out / REPORT_FILE).write_text(json.dumps(
      {'workdir': run.workdir, 'step': run.step, 'text': text, 'note': note,
       'tokens': rows}, indent=1), encoding='utf-8')
  return rows, pngs, out, note
