"""Small fine-tuning datasets the fine-tuning tests write (imported by test_*.py)."""

import json
import pathlib

import numpy as np

SENTENCES = [
    'the quick brown fox jumps over the lazy dog.',
    'a stitch in time saves nine.',
    'all that glitters is not gold.',
    'to be or not to be, that is the question.',
    'the early bird catches the worm.',
]
WORDS = ['river', 'stone', 'quiet', 'garden', 'morning', 'silver', 'paper', 'window', 'bread',
         'little', 'music', 'evening', 'yellow', 'forest', 'letter', 'summer']
NAMES = ['x', 'y', 'total', 'count', 'idx', 'buf', 'node', 'key']
FUNCS = ['len', 'max', 'min', 'sorted', 'sum', 'abs', 'str', 'int']


def write_corpus(root: pathlib.Path, docs: int = 24) -> pathlib.Path:
  """Plain-text documents of a few sentences in varying order (quick to learn)."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  for i in range(docs):
    picks = rng.choice(len(SENTENCES), size=14)
    (root / f'doc{i:02d}.txt').write_text(' '.join(SENTENCES[j] for j in picks) + '\n')
  return root


def classify_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
  """(text, label) of three kinds, 50/30/20: English-like words, Python statements,
  number lists. Labels are told apart by their character statistics, not a fixed string."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    u = rng.random()
    if u < 0.5:
      text, label = ' '.join(rng.choice(WORDS, size=rng.integers(3, 6))) + '.', 'prose'
    elif u < 0.8:
      text = '; '.join(f'{rng.choice(NAMES)} = {rng.choice(FUNCS)}({rng.choice(NAMES)}, '
                       f'{rng.integers(0, 99)})' for _ in range(2))
      label = 'code'
    else:
      text = '[' + ', '.join(str(v) for v in rng.integers(0, 999, size=rng.integers(3, 7))) + ']'
      label = 'numbers'
    out.append((text, label))
  return out


def write_classify(path: pathlib.Path, n: int = 400, seed: int = 0) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps({'text': t, 'label': y}) + '\n'
                          for t, y in classify_texts(n, seed)))
  return path


def sft_records(n: int = 120) -> list[dict]:
  """'before <word>?' -> the word before it in one of the sentences (short records)."""
  rng = np.random.default_rng(1)
  out = []
  for _ in range(n):
    words = SENTENCES[rng.integers(len(SENTENCES))].split()
    i = int(rng.integers(1, len(words)))
    out.append({'prompt': f'before {words[i]}? ', 'response': words[i - 1]})
  return out


def write_sft(path: pathlib.Path, n: int = 120) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in sft_records(n)))
  return path
