"""`python -m lm.main` as a user runs it: help, user errors, a short run and its resume.

Every test starts a real subprocess (one CPU device, JAX_PLATFORMS=cpu) in the repository
root; they are few because each one pays for importing jax.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
GARBAGE_BYTES = 300  # the corpus holds a file of only these invalid UTF-8 bytes
STORY = ('Once upon a time a small fox lived by the river. Every morning the fox ran to the '
         'old bridge and counted the boats. ')


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> dict[str, str]:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one device, not the 8 that conftest.py gives this process
  env['JAX_PLATFORMS'] = 'cpu'
  env['LM_CACHE'] = str(tmp_path_factory.mktemp('lm_cache'))  # never the user's ~/.cache/lm
  env['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('xla_cache'))
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # the rerun reuses the compiles
  return env


def _main(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'lm.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _snapshot(directory: Path) -> dict[str, str]:
  """Relative path -> content hash of every file under `directory`."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def _rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
  """A story, and a file of nothing but invalid UTF-8 (which must be read, with a note)."""
  root = tmp_path_factory.mktemp('corpus')
  (root / 'garbage.txt').write_bytes(bytes([0xff, 0xfe, 0x80]) * (GARBAGE_BYTES // 3))
  (root / 'story.txt').write_text(STORY * 40)
  return root


TINY = [
    '--config.data.source=text', '--config.data.split=tail', '--config.data.val_fraction=0.2',
    '--config.data.tokenizer.kind=char', '--config.data.seq_len=16',
    '--config.model.num_layers=1', '--config.model.width=32', '--config.model.num_heads=2',
    '--config.model.num_kv_heads=2', '--config.model.mlp_dim=64',
    '--config.optimizer.warmup_steps=2',
    '--config.train.steps=20', '--config.train.batch_size=4',
    '--config.train.steps_per_dispatch=5', '--config.train.log_every=5',
    '--config.train.eval_every=10', '--config.train.eval_batches=1',
    '--config.train.sample_tokens=8', '--config.train.sample_prompt_tokens=4',
    '--config.checkpoint.every=10',
]


@pytest.fixture(scope='module')
def cli_run(env, corpus, tmp_path_factory):
  """One short real run through the CLI, then the same command again."""
  workdir = tmp_path_factory.mktemp('cli') / 'run'
  args = [*TINY, f'--config.data.path={corpus}', f'--workdir={workdir}']
  first = _main(env, *args)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  after_first = _snapshot(workdir / 'checkpoints'), _rows(workdir)
  second = _main(env, *args)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  return {'workdir': workdir, 'args': args, 'first': first, 'second': second,
          'after_first': after_first}


def test_help_lists_the_flags():
  result = subprocess.run([sys.executable, '-m', 'lm.main', '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
  out = result.stdout + result.stderr
  assert '--config: Experiment config file' in out, out
  assert '--workdir: Directory for checkpoints' in out, out
  assert 'Traceback' not in out


def test_a_short_run_writes_its_files(cli_run, corpus):
  workdir, first = cli_run['workdir'], cli_run['first']
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [5, 10, 15, 20]
  assert all('train/loss' in r for r in rows)
  assert [r['step'] for r in rows if 'eval/loss' in r] == [10, 20]

  config = json.loads((workdir / 'config.json').read_text())  # resolved, not as given
  vocab = config['model']['vocab_size']
  assert f'vocab {vocab}' in first.stdout + first.stderr
  # char tokenizer: the story's distinct characters, U+FFFD for the garbage, special ids
  assert len(set(STORY)) + 1 < vocab < len(set(STORY)) + 8
  assert config['model']['max_len'] == 16 and config['mesh']['data'] == 1
  assert config['data']['path'] == str(corpus) and config['train']['steps'] == 20

  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == [
      '10', '20']
  assert (workdir / 'sample.txt').read_text().strip()
  # The invalid bytes are decoded as U+FFFD and reported, not dropped or fatal.
  assert f'{GARBAGE_BYTES} non-UTF-8 bytes' in first.stdout + first.stderr


def test_rerunning_the_command_resumes_and_redoes_nothing(cli_run):
  workdir, second = cli_run['workdir'], cli_run['second']
  out = second.stdout + second.stderr
  assert 'resumed from' in out and '(step 20)' in out, out[-3000:]
  assert 'eval loss' not in out  # no step ran again
  checkpoints, rows = cli_run['after_first']
  assert _rows(workdir) == rows
  assert _snapshot(workdir / 'checkpoints') == checkpoints


def _assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  err = result.stderr
  assert result.returncode != 0, result.stdout[-2000:]
  assert 'Traceback' not in err, err[-3000:]
  for fragment in fragments:
    assert fragment in err, err[-3000:]
  return err


def test_unknown_config_key_is_named_with_a_suggestion(env, tmp_path):
  result = _main(env, '--config.model.widht=3', f'--workdir={tmp_path / "run"}')
  _assert_user_error(result, "'widht'", '--config.model.widht', '"width"')
  assert not (tmp_path / 'run').exists()


def test_config_errors_are_all_named_and_the_existing_run_is_untouched(env, cli_run):
  workdir = cli_run['workdir']
  before = _snapshot(workdir)
  result = _main(env, *cli_run['args'], '--config.model.num_heads=3',
                 '--config.model.num_kv_heads=2', '--config.mesh.data=3')
  _assert_user_error(
      result,
      'model.width=32 is not divisible by model.num_heads=3',
      'model.num_heads=3 is not divisible by model.num_kv_heads=2',
      'mesh.data=3', 'this run has 1')
  assert _snapshot(workdir) == before


def test_a_checkpoint_of_another_model_is_refused_and_left_as_it_was(env, cli_run):
  workdir = cli_run['workdir']
  before = _snapshot(workdir)
  result = _main(env, *cli_run['args'], '--config.model.width=64')
  err = _assert_user_error(result, str(workdir / 'checkpoints' / '20'))
  assert 'shape' in err
  assert _snapshot(workdir) == before  # config.json too: it still describes the checkpoints


def test_missing_data_path_is_named(env, tmp_path):
  missing = tmp_path / 'nope.txt'
  result = _main(env, '--config.data.source=text', f'--config.data.path={missing}',
                 f'--workdir={tmp_path / "run"}')
  _assert_user_error(result, 'data.path', str(missing))
  assert not (tmp_path / 'run').exists()


def test_empty_text_file_is_named(env, tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  result = _main(env, *TINY, f'--config.data.path={empty}', f'--workdir={tmp_path / "run"}')
  _assert_user_error(result, str(empty), 'no non-empty text')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_a_config_file_that_does_not_exist_is_named(env, tmp_path):
  workdir = tmp_path / 'run'
  result = _main(env, '--config=configs/no_such_experiment.py', f'--workdir={workdir}')
  _assert_user_error(result, 'configs/no_such_experiment.py', 'does not exist')
  assert not workdir.exists()
