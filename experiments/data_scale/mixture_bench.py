"""Peak memory and time of preparing a data.mixture: three text domains of a generated corpus
(bench.py corpus: shards part00-07, part08-09, part10-15), sentencepiece 2048, seq_len 128.

  python experiments/data_scale/mixture_bench.py --input=/tmp/corpus-4k --cache=/tmp/mix
  # the code before streaming, for comparison (a copy of its lm/data/mixture.py):
  git show 9121da9:lm/data/mixture.py > /tmp/old_mixture.py
  python experiments/data_scale/mixture_bench.py --input=/tmp/corpus-4k --cache=/tmp/mix-old \
      --module=/tmp/old_mixture.py

Prints one JSON line: seconds and peak RSS of the preparation (getrusage, before the rows
are read back), rows, and a sha256 per domain and split of the packed rows (equal hashes:
identical rows).
Figures: docs/benchmarks.md ("Data preparation").
"""

import argparse
import hashlib
import importlib.util
import json
import pathlib
import resource
import shutil
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from configs.default import get_config  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--input', required=True)
  ap.add_argument('--cache', required=True)
  ap.add_argument('--module', default='', help='a mixture.py to use instead of lm.data.mixture')
  args = ap.parse_args()
  if args.module:
    spec = importlib.util.spec_from_file_location('other_mixture', args.module)
    mixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mixture)
  else:
    from lm.data import mixture
  shutil.rmtree(args.cache, ignore_errors=True)
  c = get_config().data
  c.mixture = (('a', f'{args.input}/part0[0-7].jsonl', 1.0),
               ('b', f'{args.input}/part0[89].jsonl', 1.0),
               ('c', f'{args.input}/part1*.jsonl', 1.0))
  c.tokenizer.kind, c.tokenizer.vocab_size, c.seq_len = 'sentencepiece', 2048, 128
  c.cache_dir = args.cache
  start = time.perf_counter()
  data = mixture.prepare_mixture(c, log=lambda _: None)
  seconds = time.perf_counter() - start
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  out = {'seconds': round(seconds, 1), 'peak_rss_mb': round(peak_mb), 'rows': {}, 'sha256': {}}
  for d, (name, _, _) in enumerate(c.mixture):
    for split in ('train', 'validation'):
      rows = data.rows(split, d)
      out['rows'][f'{name}/{split}'] = len(rows)
      out['sha256'][f'{name}/{split}'] = hashlib.sha256(rows.tobytes()).hexdigest()[:16]
  print(json.dumps(out))


if __name__ == '__main__':
  main()
