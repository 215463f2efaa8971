"""The cleaning report: <output>/report/report.{json,md} and PNG histograms.

Per stage: documents and characters removed, the top removal reasons with example
documents; for what was kept: documents, characters, languages; histograms of document
length (kept and removed), of the language score, and of exact and near-duplicate cluster
sizes; with clean.line_dedup, the documents and characters its stage kept, changed and
removed, and the units it removed most (lm/data/clean/linededup.py). Everything is counted
by streaming the shards (fixed histogram bins), so the report's memory does not grow with
the corpus (but for line dedup's removed units, one entry per distinct unit).
"""

import collections
import json
import pathlib
from typing import Any

import numpy as np

from lm.data.clean import linededup
from lm.data.clean.config import Clean

LENGTH_BINS = np.logspace(0, 8, 33)  # characters, 1 .. 1e8
SCORE_BINS = np.linspace(0, 1, 21)
SIZE_BINS = np.arange(1, 66) + 0.5  # cluster sizes 2 .. 65+
# The stages that remove documents, each with its removed/<stage>/ shards.
STAGES = ('normalize', 'language', 'gopher_repetition', 'gopher_quality', 'c4',
          'decontaminate', 'exact_dedup', 'minhash', 'line_dedup')


def _shards(folder: pathlib.Path):
  for f in sorted(folder.glob('*.jsonl')):
    with open(f, encoding='utf-8') as fh:
      for line in fh:
        yield json.loads(line)


def _example(r: dict[str, Any]) -> dict[str, Any]:
  text = r['text']
  return {'id': r['id'], 'chars': len(text),
          'text': text[:300] + (' ...' if len(text) > 300 else '')}


def stage_summary(folder: pathlib.Path, k: int) -> dict[str, Any]:
  docs = chars = 0
  reasons: collections.Counter = collections.Counter()
  examples: dict[str, list] = collections.defaultdict(list)
  lengths = np.zeros(len(LENGTH_BINS) - 1, np.int64)
  for r in _shards(folder):
    docs += 1
    chars += len(r['text'])
    reason = str((r.get('metadata') or {}).get('filter_reason', 'unknown'))
    reasons[reason] += 1
    if len(examples[reason]) < k:
      examples[reason].append(_example(r))
    lengths += np.histogram([max(1, len(r['text']))], LENGTH_BINS)[0]
  top = [{'reason': reason, 'docs': n, 'examples': examples[reason]}
         for reason, n in reasons.most_common(10)]
  return {'docs': docs, 'chars': chars, 'top_reasons': top, 'length_hist': lengths.tolist()}


def kept_summary(folder: pathlib.Path) -> dict[str, Any]:
  docs = chars = pii = 0
  langs: collections.Counter = collections.Counter()
  kinds: collections.Counter = collections.Counter()
  lengths = np.zeros(len(LENGTH_BINS) - 1, np.int64)
  scores = np.zeros(len(SCORE_BINS) - 1, np.int64)
  exact_sizes = np.zeros(len(SIZE_BINS) - 1, np.int64)
  near_sizes = np.zeros(len(SIZE_BINS) - 1, np.int64)
  for r in _shards(folder):
    m = r.get('metadata') or {}
    docs += 1
    chars += len(r['text'])
    langs[m.get('language', '?')] += 1
    kinds[m.get('kind', '?')] += 1
    pii += bool(m.get('pii_replaced'))
    lengths += np.histogram([max(1, len(r['text']))], LENGTH_BINS)[0]
    if m.get('kind') != 'code':
      scores += np.histogram([m.get('language_score', 0.0)], SCORE_BINS)[0]
    if m.get('duplicate_count', 0):
      exact_sizes += np.histogram([min(65, 1 + m['duplicate_count'])], SIZE_BINS)[0]
    if m.get('minhash_cluster_size', 1) > 1:
      near_sizes += np.histogram([min(65, m['minhash_cluster_size'])], SIZE_BINS)[0]
  return {'docs': docs, 'chars': chars, 'docs_with_pii_replaced': pii,
          'languages': dict(langs.most_common(20)), 'kinds': dict(kinds),
          'length_hist': lengths.tolist(), 'language_score_hist': scores.tolist(),
          'exact_cluster_size_hist': exact_sizes.tolist(),
          'near_cluster_size_hist': near_sizes.tolist(),
          'exact_clusters': int(exact_sizes.sum()), 'near_clusters': int(near_sizes.sum())}


def build(cfg: Clean, paths: Any, meta: dict[str, Any]) -> dict[str, Any]:
  stages = {s: stage_summary(paths.removed / s, cfg.examples_per_reason) for s in STAGES}
  kept = kept_summary(paths.kept(cfg))
  in_docs = kept['docs'] + sum(s['docs'] for s in stages.values())
  line_stats = (linededup.summary(paths.work / 'line_stats') if cfg.line_dedup.enabled
                else None)
  return {'identity': meta['identity'], 'input_docs': in_docs, 'kept': kept,
          'removed': stages, 'line_dedup': line_stats,
          'minhash_threshold': round(cfg.minhash.threshold, 3),
          'seconds': meta['seconds'], 'docs_per_s': meta['docs_per_s'],
          'mb_per_s': meta['mb_per_s'], 'workers': cfg.workers, 'tasks': cfg.tasks}


def markdown(rep: dict[str, Any]) -> str:
  kept = rep['kept']
  lines = [f'# Cleaning report ({rep["identity"]["input"]})', '',
           f'config `{rep["identity"]["config_hash"]}`, input fingerprint '
           f'`{rep["identity"]["input_fingerprint"]}` ({rep["identity"]["input_files"]} files); '
           f'{rep["seconds"]:.1f}s, {rep["docs_per_s"]} docs/s, {rep["mb_per_s"]} MB/s with '
           f'{rep["workers"]} workers over {rep["tasks"]} shards.', '',
           f'{rep["input_docs"]} documents in, **{kept["docs"]} kept** ({kept["chars"]} chars; '
           f'{kept["docs_with_pii_replaced"]} with PII replaced). Kinds: {kept["kinds"]}. '
           f'Languages: {kept["languages"]}.', '',
           f'Exact-duplicate clusters: {kept["exact_clusters"]}; near-duplicate (MinHash, '
           f'threshold ~{rep["minhash_threshold"]}) clusters: {kept["near_clusters"]}.', '',
           '| stage | docs removed | chars removed | top reasons |', '|---|---:|---:|---|']
  for stage, s in rep['removed'].items():
    reasons = ', '.join(f'{r["reason"]} ({r["docs"]})' for r in s['top_reasons'][:4])
    lines.append(f'| {stage} | {s["docs"]} | {s["chars"]} | {reasons} |')
  if rep['line_dedup']:
    lines += line_dedup_markdown(rep['line_dedup'])
  lines += ['', '## Examples of removed documents', '']
  for stage, s in rep['removed'].items():
    for r in s['top_reasons'][:3]:
      for e in r['examples'][:2]:
        snippet = ' '.join(e['text'].split())[:160].replace('|', '\\|')
        lines.append(f'- **{stage} / {r["reason"]}** `{e["id"]}` ({e["chars"]} chars): '
                     f'{snippet}')
  lines += ['', '![lengths](lengths.png) ![language score](language_score.png) '
            '![clusters](clusters.png)', '']
  return '\n'.join(lines)


def line_dedup_markdown(ld: dict[str, Any]) -> list[str]:
  lines = ['', '## Line dedup (boilerplate units)', '',
           f'{ld["docs_in"]} documents in ({ld["chars_in"]} chars): {ld["docs_kept"]} kept '
           f'({ld["chars_kept"]} chars); {ld["docs_changed"]} lost units, {ld["docs_removed"]} of '
           f'them removed whole (nothing left); {ld["units_removed"]} units '
           f'({ld["distinct_units_removed"]} distinct, {ld["chars_removed"]} chars) removed; '
           f'{ld["code_skipped"]} code documents skipped.', '',
           '| documents | occurrences | unit (normalised) |', '|---:|---:|---|']
  for u in ld['top_units']:
    unit = u['unit'][:120].replace('|', '\\|')
    lines.append(f'| {u["docs"]} | {u["occurrences"]} | {unit} |')
  return lines


def figures(rep: dict[str, Any], out: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  kept = rep['kept']
  fig, ax = plt.subplots(figsize=(6, 3.5))
  removed = np.sum([s['length_hist'] for s in rep['removed'].values()], axis=0)
  ax.stairs(kept['length_hist'], LENGTH_BINS, label='kept')
  ax.stairs(removed, LENGTH_BINS, label='removed')
  ax.set(xscale='log', xlabel='document length (characters)', ylabel='documents')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / 'lengths.png', dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.stairs(kept['language_score_hist'], SCORE_BINS)
  ax.set(xlabel='language score of kept prose documents (py3langid)', ylabel='documents')
  fig.tight_layout()
  fig.savefig(out / 'language_score.png', dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.stairs(kept['exact_cluster_size_hist'], SIZE_BINS, label='exact')
  ax.stairs(kept['near_cluster_size_hist'], SIZE_BINS, label='near (MinHash)')
  ax.set(xlabel='duplicate cluster size (documents, 65 = 65+)', ylabel='clusters',
         yscale='symlog')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / 'clusters.png', dpi=100)
  plt.close(fig)


def write(cfg: Clean, paths: Any, meta: dict[str, Any], log: Any = print) -> dict[str, Any]:
  rep = build(cfg, paths, meta)
  paths.report.mkdir(parents=True, exist_ok=True)
  (paths.report / 'report.json').write_text(json.dumps(rep, indent=1))
  (paths.report / 'report.md').write_text(markdown(rep))
  if cfg.figures:
    figures(rep, paths.report)
  log(f'[clean] report: {paths.report / "report.md"}')
  return rep
