"""Peak memory and time of tokenizing + packing a cleaned dataset alone (lm/data/prepare.py),
for configs/default.py's data settings; prints one JSON line.

  python experiments/data_scale/prep_only.py CLEANED_DIR CACHE_DIR
  (cd /work/main && PYTHONPATH=$PWD python <this file> CLEANED_DIR OTHER_CACHE)  # another lm
"""

import json
import resource
import sys
import time

from configs import default
from lm.data import prepare

data = default.get_config().data
data.source, data.path, data.cache_dir = 'cleaned', sys.argv[1], sys.argv[2]
t = time.perf_counter()
p = prepare(data, log=lambda _: None)
print(json.dumps({'prepare_s': round(time.perf_counter() - t, 1),
                  'train_rows': p.stats['train_rows'],
                  'max_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
