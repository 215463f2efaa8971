"""A corpus with planted problems for the cleaning pipeline's tests (lm/data/clean).

`build(root)` writes, across .jsonl, .jsonl.gz, .jsonl.zst, .txt, .parquet and .py files:
distinct English documents; exact copies (spacing changed); near-duplicates
with about 10% (9%) of their words replaced in one run; junk and boilerplate pages;
German/French/Spanish documents; documents with PII; documents holding an evaluation
example (the eval JSONL beside them); documents sharing boilerplate lines (BOILERPLATE,
each in 9 documents, one document of nothing else), a line in 3 (RARE) and a short line in
24 (SHORT); and Python files. It returns what it planted.
"""

import gzip
import json
import pathlib
import re

import numpy as np
import zstandard

ENGLISH = '''the of and to in a is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when
what if so no will more can said who about out up them some could into than other time only
then its now over also new after first way two people may most very well years where
through much before good great because little just world still long never being here man
day life house water river city road country family school garden morning evening window
small old young light music story picture table letter money market village mountain
summer winter friend mother father brother sister teacher doctor farmer morning church
bridge island forest valley kitchen station harbour journey history evening question
answer number moment reason interest different important children together between against
without around another nothing something everything always often sometimes usually
already almost enough quite rather perhaps certainly suddenly quickly slowly carefully
walked talked looked opened closed started turned carried brought thought remembered
believed understood followed wanted needed learned explained described decided returned
warm cold bright dark quiet busy happy careful simple strong heavy early late open
'''.split()
GERMAN = '''der die das und ist nicht ein eine zu mit auf für von den dem sich des im auch
es an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen
so zum war haben nur oder aber vor zur bis mehr durch man sein wurde sei kann gegen vom
schon wenn habe seine ihre dann unter wir soll ich eines jahr zwei jahre diese wieder
keine seiner worden uns ihr zwischen immer gibt sagte beim unsere sehr heute haus stadt
'''.split()
FRENCH = '''le de un être et à il avoir ne je son que se qui ce dans en du elle au pour pas
que vous par sur faire plus dire me on mon lui nous comme mais pouvoir avec tout y aller
voir en bien où sans tu ou leur homme si deux mari moi vouloir te femme venir quand grand
celui notre devoir là jour prendre même votre tout rien petit encore aussi quelque dont
'''.split()
SPANISH = '''el la de que y a en un ser se no haber por con su para como estar tener le lo
todo pero más hacer o poder decir este ir otro ese si me ya ver porque dar cuando él muy
sin vez mucho saber qué sobre mi alguno mismo yo también hasta año dos querer entre así
'''.split()
JUNK = [
    'Home | About | Contact | Login | Register\n' * 30,
    'lorem ipsum dolor sit amet, consectetur adipiscing elit. ' * 40,
    '#### $$$ %%% @@@ ^^^ &&& *** !!! ### $$$\n' * 25,
    'Click here. Click here. Click here. Buy now.\n' * 40,
    '... ... ... ...\n' * 60,
    '1234 5678 9012 3456 7890 1234 5678 9012\n' * 30,
    'Subscribe to our newsletter\nSubscribe to our newsletter\n' * 25,
    'Accept cookies. We use cookies to improve your experience. Privacy policy.\n' * 20,
    'Page 1 of 20 Next Previous First Last\n' * 35,
    'function init() { var x = document.getElementById(a); return x; }\n' * 20,
]
# Site boilerplate that passes the prose filters (C4 keeps lines of words ending in '.', and
# drops those naming cookies or policies): line dedup (clean.line_dedup) must remove it.
BOILERPLATE = (
    'Share this story with your friends and family on the social networks.',
    'Sign up for the weekly letter to read the best of our stories first.',
    'All of the pictures on this page belong to the village history society.',
    'Comments are closed for this article, but you can write to the editor.',
    'Read more about the history of the town and the people in our archive.',
    'Our office is open from nine to five and is closed on the weekend.',
)
RARE = 'This one line is shared by only three of the documents in the corpus.'
SHORT = 'See you soon.'  # in every boilerplate document, but under min_chars
PII = {'email': 'jane.doe1987@mailhost.example', 'phone': '+1 (415) 555-0134',
       'ip': '93.184.216.34', 'aws': 'AKIAIOSFODNN7EXAMPLQ',
       'password': 'hunter2hunter2secret'}


STOP = {'en': 'the of and to that with have be a in'.split(), 'de': 'der die und zu das'.split(),
        'fr': 'le de et la les'.split(), 'es': 'el la de que y'.split()}


def sentence(rng: np.random.Generator, vocab: list[str], n: int) -> str:
  """n words of `vocab`, a third of them its language's most common words (as in text)."""
  stop = next(v for v in STOP.values() if v[0] in vocab)
  words = [stop[int(rng.integers(0, len(stop)))] if rng.random() < 0.3 else
           vocab[int(rng.integers(0, len(vocab)))] for _ in range(n)]
  return ' '.join(words).capitalize() + '.'


def prose(rng: np.random.Generator, vocab: list[str] = ENGLISH, lines: int = 12) -> str:
  """A document of `lines` lines, each one or two sentences of 8-14 words."""
  return '\n'.join(' '.join(sentence(rng, vocab, int(rng.integers(8, 15)))
                            for _ in range(int(rng.integers(1, 3)))) for _ in range(lines))


def near_copy(rng: np.random.Generator, text: str, fraction: float = 0.09) -> str:
  """`text` with `fraction` of its words replaced by other words, in one contiguous run."""
  words = text.split(' ')
  k = max(1, int(len(words) * fraction))
  start = int(rng.integers(0, len(words) - k))
  for i in range(start, start + k):
    words[i] = ENGLISH[int(rng.integers(0, len(ENGLISH)))]
  return ' '.join(words)


def shingles(text: str, n: int = 5) -> set[str]:
  """Word n-grams as the pipeline's MinHash sees them (lower case, punctuation dropped)."""
  ws = re.findall(r'\w+', text.lower())
  return {' '.join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def jaccard(a: str, b: str) -> float:
  sa, sb = shingles(a), shingles(b)
  return len(sa & sb) / len(sa | sb)


def plant_boilerplate(rng: np.random.Generator, docs: dict[str, str]) -> list[str]:
  """24 prose documents, each with 2 BOILERPLATE lines (each line in 8), SHORT, and RARE
  in the first 3; and one of only the BOILERPLATE lines. Returns their names."""
  names = []
  for j in range(24):
    lines = prose(rng, lines=10).split('\n')
    lines.insert(3, BOILERPLATE[j % 6])
    lines.insert(7, SHORT)
    lines.append(BOILERPLATE[(j + 1 + j // 6) % 6])
    if j < 3:
      lines.insert(5, RARE)
    docs[f'boiler{j:03d}'] = '\n'.join(lines)
    names.append(f'boiler{j:03d}')
  docs['boileronly'] = '\n'.join(BOILERPLATE)
  return names + ['boileronly']


def build(root: pathlib.Path, distinct: int = 200, seed: int = 0) -> dict:
  """Writes the corpus under root/corpus and the eval set at root/eval.jsonl."""
  rng = np.random.default_rng(seed)
  corpus = root / 'corpus'
  (corpus / 'code').mkdir(parents=True)
  base = {f'doc{i:04d}': prose(rng) for i in range(distinct)}
  names = list(base)
  planted: dict = {'distinct': list(names), 'exact': {}, 'near': {}, 'junk': [], 'foreign': [],
                   'pii': [], 'eval': [], 'code': []}
  docs = dict(base)
  for j, i in enumerate(rng.choice(distinct, 20, replace=False)):
    docs[f'exact{j:03d}'] = '  ' + base[names[i]].replace(' ', '   ') + '\n\n'
    planted['exact'][f'exact{j:03d}'] = names[i]
  for j, i in enumerate(rng.choice(distinct, 40, replace=False)):
    docs[f'near{j:03d}'] = near_copy(rng, base[names[i]])
    planted['near'][f'near{j:03d}'] = names[i]
  for j, text in enumerate(JUNK):
    docs[f'junk{j:03d}'] = text
    planted['junk'].append(f'junk{j:03d}')
  for j in range(12):
    vocab = (GERMAN, FRENCH, SPANISH)[j % 3]
    docs[f'foreign{j:03d}'] = prose(rng, vocab)
    planted['foreign'].append(f'foreign{j:03d}')
  for j in range(10):
    text = prose(rng).split('\n')
    text[2] += f' Write to {PII["email"]} or call {PII["phone"]} today.'
    text[5] += f' The server at {PII["ip"]} answered.'
    text[7] += f' Use key {PII["aws"]} with password = "{PII["password"]}" here.'
    docs[f'pii{j:03d}'] = '\n'.join(text)
    planted['pii'].append(f'pii{j:03d}')
  evals = []
  for j in range(10):
    record = {'prompt': sentence(rng, ENGLISH, 14), 'response': sentence(rng, ENGLISH, 12)}
    evals.append(record)
    text = prose(rng).split('\n')
    text.insert(4, f'{record["prompt"]} {record["response"]}')
    docs[f'evalcopy{j:03d}'] = '\n'.join(text)
    planted['eval'].append(f'evalcopy{j:03d}')
  with open(root / 'eval.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in evals)
  planted['boiler'] = plant_boilerplate(np.random.default_rng(seed + 1), docs)

  # Spread over formats: 3 plain JSONL shards, one .gz, one .zst, Parquet, .txt files.
  order = list(docs)
  rng.shuffle(order)
  chunks = np.array_split(np.array(order), 8)
  lines = lambda chunk: ''.join(json.dumps({'text': docs[n], 'name': str(n)}) + '\n'  # noqa: E731
                                for n in chunk)
  for k in range(3):
    (corpus / f'part{k}.jsonl').write_text(lines(chunks[k]))
  with gzip.open(corpus / 'part3.jsonl.gz', 'wt') as f:
    f.write(lines(chunks[3]))
  (corpus / 'part4.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(
      lines(chunks[4]).encode()))
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({'text': [docs[n] for n in chunks[5]], 'name': list(chunks[5])}),
                 corpus / 'part5.parquet')
  for n in list(chunks[6]) + list(chunks[7]):
    (corpus / f'{n}.txt').write_text(docs[n])  # the id is the file name
  stdlib = pathlib.Path(json.__file__).parents[1]
  for name in ('textwrap.py', 'bisect.py', 'colorsys.py'):
    (corpus / 'code' / name).write_text((stdlib / name).read_text())
    planted['code'].append(f'code/{name}')
  planted['texts'] = docs
  return planted
