"""Sources (stdlib, text files, TFDS argument checks) and the train/validation split."""

import json
import pathlib

import pytest

from configs.default import get_config
from lm.data import DataError, prepare, sources, split, store
from lm.data.sources import Document


def _cfg(tmp_path: pathlib.Path, **overrides):
  c = get_config().data
  c.cache_dir = str(tmp_path / 'cache')
  c.tokenizer.kind = 'byte'
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


# ---- stdlib ------------------------------------------------------------------


def test_stdlib_source_finds_real_files_and_no_tests():
  files = sources.stdlib_files()
  names = [n for n, _ in files]
  assert len(names) > 300
  assert 'os.py' in names and 'json/__init__.py' in names and 'collections/__init__.py' in names
  assert names == sorted(names)
  for name, path in files:
    assert name.endswith('.py') and path.is_file()
    dirs = name.split('/')[:-1]
    assert not any(d in ('site-packages', 'dist-packages', 'tests', 'idle_test', '__pycache__')
                   or d.startswith('test') for d in dirs), name


def test_stdlib_read_max_docs_in_path_order(tmp_path):
  corpus = sources.read(_cfg(tmp_path, max_docs=5))
  assert len(corpus.documents) == 5
  names = [d.name for d in corpus.documents]
  assert names == sorted(names)
  root = sources.stdlib_root()
  for d in corpus.documents:
    assert d.text == (root / d.name).read_text(encoding='utf-8') and d.text


# ---- text files --------------------------------------------------------------


def _corpus_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  root = tmp_path / 'corpus'
  (root / 'sub').mkdir(parents=True)
  (root / 'a.txt').write_text('alpha\n\tbeta  gamma\n')
  (root / 'sub' / 'b.txt').write_text('zweites Dokument ü 🙂')
  (root / 'c.jsonl').write_text(json.dumps({'text': 'first line'}) + '\n\n'
                                + json.dumps({'text': 'third\nline', 'other': 1}) + '\n')
  (root / 'notes.md').write_text('not picked up from a directory')
  (root / 'empty.txt').write_text('')
  return root


def test_text_source_directory_reads_txt_and_jsonl_recursively(tmp_path):
  root = _corpus_dir(tmp_path)
  docs = sources.read(_cfg(tmp_path, source='text', path=str(root))).documents
  assert [(d.name, d.text) for d in docs] == [
      ('a.txt', 'alpha\n\tbeta  gamma\n'),
      ('c.jsonl:1', 'first line'),
      ('c.jsonl:3', 'third\nline'),
      ('sub/b.txt', 'zweites Dokument ü 🙂'),
  ]


def test_text_source_file_and_glob(tmp_path):
  root = _corpus_dir(tmp_path)
  one = sources.read(_cfg(tmp_path, source='text', path=str(root / 'sub' / 'b.txt'))).documents
  assert [(d.name, d.text) for d in one] == [('b.txt', 'zweites Dokument ü 🙂')]
  flat = sources.read(_cfg(tmp_path, source='text', path=str(root / '*.txt'))).documents
  assert [d.name for d in flat] == ['a.txt']  # empty.txt holds no text
  deep = sources.read(_cfg(tmp_path, source='text', path=str(root / '**' / '*.txt'))).documents
  assert [d.text for d in deep] == ['alpha\n\tbeta  gamma\n', 'zweites Dokument ü 🙂']
  md = sources.read(_cfg(tmp_path, source='text', path=str(root / '*.md'))).documents
  assert [d.text for d in md] == ['not picked up from a directory']


def test_jsonl_field_is_configurable(tmp_path):
  path = tmp_path / 'x.jsonl'
  path.write_text('{"body": "b1"}\n{"body": "b2"}\n')
  docs = sources.read(_cfg(tmp_path, source='text', path=str(path), jsonl_field='body')).documents
  assert [d.text for d in docs] == ['b1', 'b2']


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
  raw = b'ok \xff\xfe end \xe2\x82'  # two bad bytes and a truncated 3-byte sequence
  (tmp_path / 'bad.txt').write_bytes(raw)
  (tmp_path / 'good.txt').write_text('fine text ' * 20)
  docs = sources.read(_cfg(tmp_path, source='text', path=str(tmp_path))).documents
  assert docs[0].text == raw.decode('utf-8', errors='replace')
  assert sources.decode_utf8(raw) == (raw.decode('utf-8', errors='replace'), 4)
  lines = []
  prepared = prepare(_cfg(tmp_path, source='text', path=str(tmp_path), split='tail',
                          val_fraction=0.3), seq_len=8, log=lines.append)
  assert prepared.stats['replaced_bytes'] == 4
  assert any('4 non-UTF-8 bytes' in line for line in lines)


def test_errors_name_the_path(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(DataError, match=str(missing)):
    sources.read(_cfg(tmp_path, source='text', path=str(missing)))
  with pytest.raises(DataError, match='matches no files'):
    sources.read(_cfg(tmp_path, source='text', path=str(tmp_path / '*.txt')))
  with pytest.raises(DataError, match='data.path is empty'):
    sources.read(_cfg(tmp_path, source='text', path=''))
  (tmp_path / 'e').mkdir()
  (tmp_path / 'e' / 'empty.txt').write_text('')
  with pytest.raises(DataError, match=f"{tmp_path / 'e'}.*no non-empty text"):
    sources.read(_cfg(tmp_path, source='text', path=str(tmp_path / 'e')))


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "ok"}\n{"text": oops}\n')
  with pytest.raises(DataError, match=f'{bad}:2: not valid JSON'):
    sources.read(_cfg(tmp_path, source='text', path=str(bad)))
  bad.write_text('{"text": "ok"}\n\n{"body": "x"}\n')
  with pytest.raises(DataError, match=f"{bad}:3: no field 'text'"):
    sources.read(_cfg(tmp_path, source='text', path=str(bad)))
  bad.write_text('{"text": 5}\n')
  with pytest.raises(DataError, match=f"{bad}:1: field 'text' is a int"):
    sources.read(_cfg(tmp_path, source='text', path=str(bad)))


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
  docs = [Document('x', 'first'), Document('y', 'second \u00e9'), Document('z', 'third')]
  store.write({'train': docs, 'validation': docs[:1]}, tmp_path / 'tfds')
  cfg = _cfg(tmp_path, source='tfds', tfds_name='lm_documents', tfds_split='train',
             tfds_data_dir=str(tmp_path / 'tfds'), max_docs=2)
  got = sources.read(cfg).documents  # max_docs=2: the first two records TFDS stored
  assert len(got) == 2 and {d.text for d in got} < {d.text for d in docs}
  assert [d.name for d in got] == ['train/0', 'train/1']
  assert {d.text for d in sources.read(_cfg(
      tmp_path, source='tfds', tfds_name='lm_documents', tfds_split='train',
      tfds_data_dir=str(tmp_path / 'tfds'))).documents} == {d.text for d in docs}
  cfg.tfds_text_feature = 'body'
  with pytest.raises(DataError, match="data.tfds_text_feature='body' is not a feature"):
    sources.read(cfg)


def test_tfds_argument_checks(tmp_path):
  with pytest.raises(DataError, match='data.tfds_name is empty'):
    sources.read(_cfg(tmp_path, source='tfds', tfds_name=''))
  with pytest.raises(DataError, match="data.tfds_name='no_such_dataset_xyz' is not a TFDS"):
    sources.read(_cfg(tmp_path, source='tfds', tfds_name='no_such_dataset_xyz'))


@pytest.mark.parametrize('field,value,match', [
    ('source', 'web', 'data.source'),
    ('split', 'random', 'data.split'),
    ('val_fraction', 0.0, 'data.val_fraction'),
    ('max_docs', -1, 'data.max_docs'),
])
def test_bad_config_fields_are_named(tmp_path, field, value, match):
  with pytest.raises(DataError, match=match):
    prepare(_cfg(tmp_path, **{field: value}), seq_len=8, log=lambda _: None)


# ---- split ------------------------------------------------------------------


def _docs(n: int) -> list[Document]:
  return [Document(f'dir/file_{i}.py', f'text {i}\n') for i in range(n)]


def test_document_split_is_deterministic_disjoint_and_by_name():
  docs = _docs(400)
  a = split.split_documents(docs, 'document', 0.1)
  b = split.split_documents(list(reversed(docs)), 'document', 0.1)
  train, val = {d.name for d in a['train']}, {d.name for d in a['validation']}
  assert not train & val and train | val == {d.name for d in docs}
  assert val == {d.name for d in b['validation']}  # depends on the name, not the order
  assert 20 <= len(val) <= 65  # ~40 expected
  assert [d.name for d in a['train']] == [d.name for d in docs if d.name in train]  # order kept
  assert val == {d.name for d in docs if split.hash_unit(d.name) < 0.1}


def test_document_split_keeps_both_sides_non_empty():
  docs = _docs(3)
  tiny = split.split_documents(docs, 'document', 1e-9)
  assert len(tiny['validation']) == 1 and len(tiny['train']) == 2
  huge = split.split_documents(docs, 'document', 1 - 1e-9)
  assert len(huge['train']) == 1 and len(huge['validation']) == 2
  with pytest.raises(DataError, match="data.split='tail'"):
    split.split_documents(docs[:1], 'document', 0.1)


@pytest.mark.parametrize('texts', [['x' * 1000 + 'y' * 115], ['abc' * 37, 'defg' * 11, 'h' * 90]])
def test_tail_split_is_the_exact_character_boundary(texts):
  docs = [Document(f'd{i}', t) for i, t in enumerate(texts)]
  full = ''.join(texts)
  cut = int(len(full) * (1 - 0.1))  # nanoGPT: data[:int(n * 0.9)]
  parts = split.split_documents(docs, 'tail', 0.1)
  assert ''.join(d.text for d in parts['train']) == full[:cut]
  assert ''.join(d.text for d in parts['validation']) == full[cut:]
  assert all(d.text for d in parts['train'] + parts['validation'])
