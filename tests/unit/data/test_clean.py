"""The cleaning pipeline (lm/data/clean) on a corpus with planted problems (clean_corpus.py).

One run with 1 worker (line dedup on) is shared; a 2-worker run, a run killed midway and
resumed, and a training run on the cleaned dataset are compared with it.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from configs import clean as clean_defaults
from lm import api
from lm.data import store
from lm.data.clean import config as clean_config
from lm.data.clean import pipeline, readers, steps
from lm.errors import ConfigError

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
sys.path.insert(0, os.path.dirname(__file__))
import clean_corpus  # noqa: E402


def _config(root: pathlib.Path, out: str, workers: int = 1, **over):
  c = clean_defaults.get_config()
  c.clean.input = str(root / 'corpus')
  c.clean.output = str(root / out)
  c.clean.id_key = 'name'
  c.clean.workers = workers
  c.clean.figures = out == 'one'  # draw the PNGs once
  c.clean.decontaminate.paths = (str(root / 'eval.jsonl'),)
  c.clean.line_dedup.enabled = True
  for k, v in over.items():
    setattr(c.clean, k, v)
  return clean_config.check(c)


def _kept(out: pathlib.Path, stage: str = 'lines') -> dict[str, str]:
  """{planted name: text} of the documents that survived (work/<stage>), in output order."""
  return {name: d.text for name, d in _kept_docs(out, stage).items()}


def _kept_docs(out: pathlib.Path, stage: str = 'lines') -> dict:
  docs = {}
  for rank in range(4):
    for d in pipeline.read_shard(out / 'work' / stage, rank):
      docs[d.id.removesuffix('.txt')] = d
  return docs


def _removed(out: pathlib.Path) -> dict[str, tuple[str, str]]:
  found = {}
  for f in sorted(out.glob('removed/*/*.jsonl')):
    for line in f.read_text().splitlines():
      r = json.loads(line)
      found[r['id'].removesuffix('.txt')] = (f.parent.name, r['metadata']['filter_reason'])
  return found


@pytest.fixture(scope='module')
def cleaned(tmp_path_factory):
  root = tmp_path_factory.mktemp('clean')
  planted = clean_corpus.build(root)
  meta = pipeline.clean(_config(root, 'one'))
  return root, planted, meta


def test_planted_problems_are_found(cleaned):
  root, planted, meta = cleaned
  out = root / 'one'
  kept, removed = _kept(out), _removed(out)
  texts = planted['texts']
  assert (meta['counts']['input_docs'] == len(texts) + len(planted['code']) ==
          len(kept) + len(removed))
  # Near-duplicates at Jaccard >= 0.8: >= 95% found (the pair does not both survive).
  close = [n for n, b in planted['near'].items() if clean_corpus.jaccard(texts[n], texts[b]) >= 0.8]
  assert len(close) >= 30, 'the corpus plants near-duplicates at Jaccard >= 0.8'
  found = [n for n in close if not (n in kept and planted['near'][n] in kept)]
  assert len(found) >= 0.95 * len(close), (len(found), len(close))
  # Exact copies (spacing changed): one member of each group survives.
  for copy, base in planted['exact'].items():
    assert not (copy in kept and base in kept), copy
  groups: dict[str, list[str]] = {}
  for copy, base in {**planted['exact'], **planted['near']}.items():
    groups.setdefault(base, [base]).append(copy)
  for base, members in groups.items():
    assert any(m in kept for m in members), f'{base}: a whole duplicate cluster was removed'
  # Distinct documents that have no planted copy: at most 1% removed.
  lone = [n for n in planted['distinct'] if n not in groups]
  lost = [n for n in lone if n not in kept]
  assert len(lost) <= 0.01 * len(lone), [(n, removed.get(n)) for n in lost]
  # Junk and other languages removed; code kept though it is no prose.
  assert not [n for n in planted['junk'] + planted['foreign'] if n in kept]
  assert {removed[n][1] for n in planted['foreign']} <= {'language_de', 'language_fr',
                                                         'language_es'}
  assert all(n in kept for n in planted['code'])
  # Every eval copy removed, by decontamination.
  assert {removed.get(n) for n in planted['eval']} == {('decontaminate', 'eval_ngram_overlap')}
  # No planted PII survives; the documents stay, with placeholders.
  everything = '\n'.join(kept.values())
  for value in clean_corpus.PII.values():
    assert value not in everything, value
  for n in planted['pii']:
    for placeholder in (steps.EMAIL, steps.PHONE, steps.IP, steps.SECRET):
      assert placeholder in kept[n], (n, placeholder)


def test_boilerplate_lines_are_removed(cleaned):
  """clean.line_dedup (min_docs 5, min_chars 20): each BOILERPLATE line (in 9 documents)
  leaves every document; the other lines, RARE (in 3) and SHORT (under min_chars) stay."""
  root, planted, _ = cleaned
  out = root / 'one'
  before, after = _kept_docs(out, 'final'), _kept_docs(out)
  boiler = [n for n in planted['boiler'] if n in before]
  assert len(boiler) == len(planted['boiler']), 'the prose filters keep the planted pages'
  kept = '\n'.join(d.text for d in after.values())
  for line in clean_corpus.BOILERPLATE:
    assert line not in kept, line
  assert kept.count(clean_corpus.RARE) == 3 and kept.count(clean_corpus.SHORT) == 24
  for n in boiler[:-1]:
    lines = planted['texts'][n].split('\n')
    assert after[n].text == '\n'.join(x for x in lines if x not in clean_corpus.BOILERPLATE)
    assert after[n].metadata['line_dedup_removed'] == 2
  # Nothing else changed; the page of only boilerplate is removed, with its reason.
  assert [n for n in after if after[n].text != before[n].text] == [
      n for n in after if n in boiler]
  assert set(before) - set(after) == {'boileronly'}
  assert _removed(out)['boileronly'] == ('line_dedup', 'boilerplate_only')
  report = json.loads((out / 'report' / 'report.json').read_text())
  ld = report['line_dedup']
  assert {u['unit']: u['docs'] for u in ld['top_units'][:6]} == {
      ' '.join(x.lower().split()): 9 for x in clean_corpus.BOILERPLATE}
  assert (ld['docs_in'], ld['docs_kept'], ld['docs_changed'], ld['docs_removed'],
          ld['units_removed']) == (len(before), len(after), 25, 1, 54)
  assert ld['chars_in'] - ld['chars_kept'] == ld['chars_removed'] > 0
  assert report['removed']['line_dedup']['docs'] == 1
  md = (out / 'report' / 'report.md').read_text()
  assert '## Line dedup' in md and '| 9 | 9 | share this story with' in md


def test_paragraph_dedup_sums_shards_skips_code_and_resumes(tmp_path):
  """unit='paragraph', min_docs=3, on two hand-written stage-6 shards: a paragraph in 2
  documents of each (once with other case and spacing) is boilerplate, one in 2 documents
  is not, a code document keeps its copy; a lost task is redone, the others skipped."""
  c = clean_defaults.get_config()
  c.clean.output = str(tmp_path / 'out')
  c.clean.tasks = 2
  c.clean.line_dedup.enabled = True
  c.clean.line_dedup.unit = 'paragraph'
  c.clean.line_dedup.min_docs = 3
  cfg = clean_config.check(c)
  paths = pipeline.Paths(cfg.output)
  banner = 'Follow the village paper on the networks\nfor the news of the week.'
  pair = 'This paragraph is in two of the documents, under min_docs.'
  text = lambda *ps: '\n\n'.join(ps)  # noqa: E731
  shards = [[('a', text('First story of the day.', banner, pair), 'prose'),
             ('b', text(banner, 'Second story, a longer one.'), 'prose'),
             ('code', text('import os', banner), 'code')],
            [('c', text('Third story.', 'FOLLOW the village  paper on the networks for the '
                        'news of the week.', pair), 'prose'),
             ('d', banner, 'prose')]]
  for rank, docs in enumerate(shards):
    folder = paths.work / 'final'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{rank:05d}.jsonl').write_text(''.join(
        json.dumps({'text': t, 'id': i, 'metadata': {'kind': k}}) + '\n' for i, t, k in docs))
  run = lambda: pipeline.run_stages(pipeline._line_stages(cfg, paths), 2, paths,  # noqa: E731
                                    lambda _: None)
  run()
  got = {d.id: d.text for r in range(2) for d in pipeline.read_shard(paths.work / 'lines', r)}
  assert got == {'a': text('First story of the day.', pair),
                 'b': 'Second story, a longer one.', 'code': text('import os', banner),
                 'c': text('Third story.', pair)}
  assert _removed(paths.root) == {'d': ('line_dedup', 'boilerplate_only')}
  lost = paths.work / 'lines' / '00001.jsonl'
  first, kept_shard = lost.read_text(), (paths.work / 'lines' / '00000.jsonl').stat().st_mtime_ns
  lost.unlink()
  (pathlib.Path(paths.logs('9_line_filter')) / 'completions' / '00001').unlink()
  run()
  assert lost.read_text() == first
  assert (paths.removed / 'line_dedup' / '00001.jsonl').read_text().count('\n') == 1
  assert (paths.work / 'lines' / '00000.jsonl').stat().st_mtime_ns == kept_shard


def test_dataset_report_and_lineage(cleaned):
  root, _, meta = cleaned
  out = root / 'one'
  train = list(store.iter_texts(out / 'documents', 'train'))
  val = list(store.iter_texts(out / 'documents', 'validation'))
  assert len(train) + len(val) == meta['counts']['kept_docs'] and val
  assert set(train) | set(val) == set(_kept(out).values())
  ident = meta['identity']
  assert len(ident['config_hash']) == 16 and len(ident['input_fingerprint']) == 16
  report = json.loads((out / 'report' / 'report.json').read_text())
  assert report['removed']['decontaminate']['docs'] == 10
  assert report['kept']['near_clusters'] > 0 and report['removed']['exact_dedup']['docs'] >= 20
  assert report['removed']['language']['top_reasons'][0]['examples']
  for png in ('lengths.png', 'language_score.png', 'clusters.png'):
    assert (out / 'report' / png).stat().st_size > 1000
  assert '| minhash |' in (out / 'report' / 'report.md').read_text()
  # A rerun with the same config and input is a no-op; another config is refused.
  assert pipeline.clean(_config(root, 'one'), log=lambda _: None) == json.loads(
      (out / 'meta.json').read_text())
  with pytest.raises(clean_config.CleanError, match='another config'):
    pipeline.clean(_config(root, 'one', ftfy=False))


def test_two_workers_give_the_same_output(cleaned):
  root, _, _ = cleaned
  pipeline.clean(_config(root, 'two', workers=2))
  assert list(_kept(root / 'two').items()) == list(_kept(root / 'one').items())
  for name in ('train', 'validation'):
    assert (list(store.iter_texts(root / 'two' / 'documents', name)) ==
            list(store.iter_texts(root / 'one' / 'documents', name)))


def test_a_killed_run_resumes_to_the_same_output(cleaned):
  """`python -m lm clean` killed (SIGKILL) once a dedup shard is done, then rerun."""
  root, _, _ = cleaned
  cfg = _config(root, 'killed')
  done = root / 'killed' / 'work' / 'logs' / '3_dedup' / 'completions'
  child = subprocess.Popen(
      [sys.executable, '-m', 'lm', 'clean', '--config=configs/clean.py',
       f'--config.clean.input={cfg.input}', f'--config.clean.output={cfg.output}',
       '--config.clean.id_key=name', '--config.clean.figures=False',
       '--config.clean.line_dedup.enabled=True',
       f'--config.clean.decontaminate.paths=({str(root / "eval.jsonl")!r},)'],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 180
  while time.time() < deadline and child.poll() is None and not (
      done.is_dir() and os.listdir(done)):
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert not (root / 'killed' / 'meta.json').exists(), 'killed before the end'
  assert 1 <= len(os.listdir(done)) < 4
  pipeline.clean(cfg, log=lambda _: None)
  assert list(_kept(root / 'killed').items()) == list(_kept(root / 'one').items())


def test_warc_records_are_extracted(tmp_path):
  from warcio.statusandheaders import StatusAndHeaders
  from warcio.warcwriter import WARCWriter
  page = ('<html><head><title>t</title></head><body><nav>Home | About</nav><article>'
          '<h1>The river</h1><p>The old bridge crossed the river near the village, and every '
          'morning the farmers walked over it to the market with their baskets.</p><p>In '
          'winter the water was cold and quiet, and the children watched it from the '
          'window of the school.</p></article></body></html>')
  path = tmp_path / 'crawl.warc.gz'
  with open(path, 'wb') as f:
    writer = WARCWriter(f, gzip=True)
    for url, ctype, body in (('http://a.example/river', 'text/html; charset=utf-8', page),
                             ('http://a.example/logo.png', 'image/png', 'PNG')):
      headers = StatusAndHeaders('200 OK', [('Content-Type', ctype)], protocol='HTTP/1.0')
      writer.write_record(writer.create_warc_record(url, 'response', payload=_bytes(body),
                                                    http_headers=headers))
  files = readers.list_inputs(str(tmp_path), ('.warc',))
  docs = list(readers.FileReader(files, 'text', ()).run(None, 0, 1))
  assert len(docs) == 1
  assert 'old bridge crossed the river' in docs[0].text and '<p>' not in docs[0].text
  assert docs[0].metadata['url'] == 'http://a.example/river'


def _bytes(text: str):
  import io
  return io.BytesIO(text.encode())


def test_config_problems_name_the_key(tmp_path):
  c = clean_defaults.get_config()
  c.clean.output = str(tmp_path)
  c.clean.minhash.num_buckest = 3
  with pytest.raises(ConfigError, match="clean.minhash.num_buckest.*num_buckets") as e:
    clean_config.check(c)
  assert str(e.value).count('\n') == 0 and str(e.value).endswith(
      'valid keys of clean.minhash: enabled, hashes_per_bucket, n_grams, num_buckets, seed')
  # On the command line: one line on stderr, not a traceback.
  cli = subprocess.run([sys.executable, '-m', 'lm', 'clean', '--config.clean.minhsh.seed=1'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert cli.returncode == 1 and 'Traceback' not in cli.stderr
  assert cli.stderr.strip().splitlines()[-1].startswith(
      "error: --config.clean.minhsh: unknown key 'clean.minhsh' (not in configs/clean.py); "
      "did you mean 'clean.minhash'?; valid keys of clean: c4, code_suffixes, ")
  c = clean_defaults.get_config()
  c.clean.output = str(tmp_path)
  c.clean.tasks = 0
  c.clean.language.min_score = 2.0
  with pytest.raises(ConfigError, match='clean.tasks=0.*\n.*clean.language.min_score'):
    clean_config.check(c)
  c = clean_defaults.get_config()
  c.clean.output = str(tmp_path)
  c.clean.line_dedup.unit = 'sentences'
  c.clean.line_dedup.min_docs = 1
  with pytest.raises(ConfigError, match="clean.line_dedup.unit='sentences' is not one of 'line', "
                     "'paragraph'.*\n.*clean.line_dedup.min_docs=1 must be >= 2"):
    clean_config.check(c)
  # Off, line_dedup's fields leave the config hash as it was before the section existed.
  c.clean.line_dedup.unit, c.clean.line_dedup.min_docs = 'paragraph', 2
  default = clean_defaults.get_config()
  default.clean.output = str(tmp_path)
  assert (clean_config.config_hash(clean_config.check(c)) ==
          clean_config.config_hash(clean_config.check(default)))


def test_trains_on_the_cleaned_dataset(cleaned, tmp_path):
  root, _, meta = cleaned
  config = api.load_config('configs/default.py', {
      'data.source': 'cleaned', 'data.path': str(root / 'one'),
      'data.cache_dir': str(tmp_path / 'cache'), 'data.tokenizer.kind': 'byte',
      'data.seq_len': 32, 'model.num_layers': 1, 'model.width': 32, 'model.mlp_dim': 64,
      'model.num_heads': 2, 'model.num_kv_heads': 2, 'train.steps': 4, 'train.batch_size': 8,
      'train.eval_every': 4, 'train.log_every': 2, 'train.steps_per_dispatch': 2,
      'train.eval_batches': 1, 'train.sample_tokens': 0, 'checkpoint.every': 4,
      'checkpoint.async_save': False})
  final = api.train(config, tmp_path / 'run')
  assert final['step'] == 4 if 'step' in final else True
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['data']['source'] == 'cleaned'
  assert meta['identity']['config_hash'] in json.dumps(
      json.loads((root / 'one' / 'meta.json').read_text())['identity'])


def test_dataset_name_inputs_are_listed_and_fail_clearly(monkeypatch):
  """TFDS / Hugging Face dataset names (no network here: only listing and the errors)."""
  files = readers.list_inputs('tfds:no_such_dataset_xyz@validation', ())
  assert len(files) == readers.DATASET_SHARDS and files[0] == (
      'tfds:no_such_dataset_xyz@validation#000', 'tfds:no_such_dataset_xyz@validation')
  assert readers.input_bytes(files) == 0 and len(readers.fingerprint(files)) == 16
  reader = readers.FileReader(files[:1], 'text', ())
  with pytest.raises(clean_config.CleanError, match="'no_such_dataset_xyz' is not a TFDS"):
    list(reader.run(None, 0, 1))
  monkeypatch.setitem(sys.modules, 'datasets', None)  # the library missing
  hf = readers.FileReader(readers.list_inputs('hf:someone/corpus', ())[:1], 'text', ())
  with pytest.raises(clean_config.CleanError, match=r"'hf:someone/corpus@train' needs the "
                     'Hugging Face datasets library: pip install datasets'):
    list(hf.run(None, 0, 1))
  with pytest.raises(clean_config.CleanError, match='names no dataset'):
    readers.list_inputs('hf:', ())
