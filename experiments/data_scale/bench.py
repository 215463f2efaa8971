"""Throughput and peak memory of data preparation: `python -m lm clean` on a generated corpus,
then tokenizing and packing the cleaned dataset (lm/data/prepare.py) for the default config.

  # a corpus of N English documents (10% exact copies, 10% near-duplicates), 16 JSONL shards
  python experiments/data_scale/bench.py corpus --docs=4000 --out=/tmp/corpus-4k
  # clean it with W worker processes, then tokenize + pack (sentencepiece, seq_len 128);
  # prints one JSON line. Peak memory: run it under /usr/bin/time -v (max RSS).
  python experiments/data_scale/bench.py run --input=/tmp/corpus-4k --out=/tmp/out --workers=2

Figures: docs/benchmarks.md ("Data preparation").
"""

import argparse
import json
import pathlib
import resource
import shutil
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests' / 'unit' / 'data'))
import clean_corpus  # noqa: E402  (the tests' generator of English prose and near copies)


def write_corpus(out: pathlib.Path, docs: int, seed: int = 0, shards: int = 16) -> dict:
  rng = np.random.default_rng(seed)
  out.mkdir(parents=True, exist_ok=True)
  distinct = int(docs * 0.8)
  base = [clean_corpus.prose(rng) for _ in range(distinct)]
  texts = list(base)
  for i in rng.choice(distinct, docs // 10, replace=False):
    texts.append('  ' + base[i].replace(' ', '   ') + '\n')  # exact (after normalising)
  for i in rng.choice(distinct, docs - len(texts), replace=False):
    texts.append(clean_corpus.near_copy(rng, base[i]))  # about 9% of the words replaced
  order = rng.permutation(len(texts))
  nbytes = 0
  for k, part in enumerate(np.array_split(order, shards)):
    lines = ''.join(json.dumps({'text': texts[i], 'name': f'doc{i:07d}'}) + '\n' for i in part)
    (out / f'part{k:02d}.jsonl').write_text(lines)
    nbytes += len(lines.encode())
  return {'docs': len(texts), 'bytes': nbytes}


def run(input_dir: str, out: pathlib.Path, workers: int) -> dict:
  from configs import clean as clean_defaults
  from configs import default
  from lm.data import prepare
  from lm.data.clean import config as clean_config
  from lm.data.clean import pipeline
  if out.exists():
    shutil.rmtree(out)
  c = clean_defaults.get_config()
  c.clean.input, c.clean.output = input_dir, str(out / 'cleaned')
  c.clean.workers, c.clean.id_key = workers, 'name'
  t0 = time.perf_counter()
  meta = pipeline.clean(clean_config.check(c), log=lambda _: None)
  t_clean = time.perf_counter() - t0
  data = default.get_config().data
  data.source, data.path, data.cache_dir = 'cleaned', str(out / 'cleaned'), str(out / 'cache')
  t0 = time.perf_counter()
  p = prepare(data, log=lambda _: None)
  t_prepare = time.perf_counter() - t0
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {'input_docs': meta['counts']['input_docs'], 'kept_docs': meta['counts']['kept_docs'],
          'input_mb': round(meta['input_bytes'] / 1e6, 2), 'workers': workers,
          'clean_s': round(t_clean, 1), 'docs_per_s': meta['docs_per_s'],
          'mb_per_s': meta['mb_per_s'], 'removed': meta['counts']['removed'],
          'prepare_s': round(t_prepare, 1), 'train_tokens': p.stats['train_tokens'],
          'train_rows': p.stats['train_rows'], 'shards': len(p.stats['train_shards']),
          'max_rss_mb_main': round(self_kb / 1024), 'max_rss_mb_workers': round(child_kb / 1024)}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('what', choices=('corpus', 'run'))
  ap.add_argument('--docs', type=int, default=4000)
  ap.add_argument('--input', default='')
  ap.add_argument('--out', required=True)
  ap.add_argument('--workers', type=int, default=1)
  a = ap.parse_args()
  if a.what == 'corpus':
    print(json.dumps(write_corpus(pathlib.Path(a.out), a.docs)))
  else:
    print(json.dumps(run(a.input, pathlib.Path(a.out), a.workers)))


if __name__ == '__main__':
  main()
