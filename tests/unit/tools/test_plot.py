"""lm.plot: loss curves of several real runs as a PNG, by step or by tokens; clear errors.

The run is the tiny 20-step one of tests/unit/tools/test_api.py, copied to a second workdir so the
figure holds two runs.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_api import REPO, tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)

from lm import api  # noqa: E402
from lm.tools import plot  # noqa: E402

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  root = tmp_path_factory.mktemp('plot')
  api.train(tiny_config(root), root / 'run_a')
  shutil.copytree(root / 'run_a', root / 'run_b')
  rows = [json.loads(line) for line in (root / 'run_b' / 'metrics.jsonl').read_text().splitlines()]
  with open(root / 'run_b' / 'metrics.jsonl', 'w') as f:  # a visibly different second curve
    for r in rows:
      f.write(json.dumps({**r, 'train/loss': r['train/loss'] + 1, 'eval/loss': r['eval/loss'] + 1})
              + '\n')
  return root / 'run_a', root / 'run_b'


def _check_png(path: pathlib.Path) -> np.ndarray:
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE
  assert len(data) > 10_000
  image = matplotlib.image.imread(path)
  assert image[..., :3].std() > 0.01  # not a blank canvas
  return image


@pytest.mark.parametrize('x', ['step', 'tokens'])
def test_plot_runs_writes_a_png(two_runs, tmp_path, x):
  out = plot.plot_runs(two_runs, tmp_path / f'{x}.png', x=x, log_y=(x == 'tokens'))
  assert out == tmp_path / f'{x}.png'
  _check_png(out)


def test_curves_and_token_axis(two_runs):
  a, _ = two_runs
  curves = plot.load_curves(a)
  assert [s for s, _ in curves['train/loss']] == [10, 20]
  assert [s for s, _ in curves['eval/loss']] == [10, 20]
  assert plot.tokens_per_step(a) == 8 * 32  # train.batch_size * data.seq_len


def test_figure_content(two_runs):
  """One colour per run, train solid, eval dashed with markers, x scaled to tokens."""
  ax = plot.figure(two_runs, x='tokens').axes[0]
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert set(lines) == {'run_a train', 'run_a eval', 'run_b train', 'run_b eval'}
  assert lines['run_a train'].get_linestyle() == '-'
  assert lines['run_a eval'].get_linestyle() == '--' and lines['run_a eval'].get_marker() == 'o'
  assert lines['run_a train'].get_color() == lines['run_a eval'].get_color()
  assert lines['run_a train'].get_color() != lines['run_b train'].get_color()
  assert list(lines['run_b eval'].get_xdata()) == [10 * 256, 20 * 256]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)


def test_cli_default_out_and_missing_metrics(two_runs, tmp_path):
  a, b = two_runs
  out = subprocess.run([sys.executable, '-m', 'lm.plot', str(a), str(b), '--x=tokens'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  _check_png(a / 'loss.png')
  empty = tmp_path / 'not_a_run'
  empty.mkdir()
  out = subprocess.run([sys.executable, '-m', 'lm.plot', str(a), str(empty)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert str(empty / 'metrics.jsonl') in out.stderr
  assert 'Traceback' not in out.stderr


def test_missing_metrics_names_the_path(tmp_path):
  with pytest.raises(plot.PlotError, match=str(tmp_path / 'metrics.jsonl')):
    plot.plot_runs([tmp_path], tmp_path / 'x.png')
