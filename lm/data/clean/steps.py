"""The pipeline's own datatrove steps: normalisation, language id, code-awareness, PII.

datatrove (lm/data/clean/pipeline.py) provides the readers' plumbing, the Gopher and C4
filters, exact and MinHash deduplication and the executors; what it lacks, or does with a
model downloaded at run time, is here:

  Normalize        ftfy repair + Unicode NFC, control characters, whitespace
  LanguageId       py3langid (its model ships inside the wheel): metadata language and
                   language_score on every document; code documents get language 'code'
  LanguageFilter   keeps the configured languages above a minimum score
  ProseOnly        runs a prose filter (Gopher, C4, language) on prose documents only, so
                   source code is not thrown away as low-quality prose
  RegexWords       a word tokenizer for datatrove's filters and MinHash that needs no NLTK
                   data download
  pii_formatter()  e-mails and public IPs (datatrove's PIIFormatter), phone numbers and
                   secrets/keys in code, each replaced with a placeholder

A document is code when its name ends in one of clean.code_suffixes (metadata kind='code').
"""

import contextlib
import functools
import re
import unicodedata
from typing import Any

import ftfy
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIFormatter, PIIReplacer
from datatrove.utils.word_tokenizers import WordTokenizer

CODE = 'code'
PROSE = 'prose'

# C0/C1 control characters except tab and newline (carriage returns are folded first).
_CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f]')
_SPACES = re.compile(r'[^\S\n\t]')  # any Unicode space except newline and tab
_TRAILING = re.compile(r'[ \t]+$', re.MULTILINE)
_BLANKS = re.compile(r'\n{3,}')


def is_code(doc: Document) -> bool:
  return doc.metadata.get('kind') == CODE


class Normalize(PipelineStep):
  """Unicode repair (ftfy) and NFC, control characters dropped, whitespace tidied.

  Every kind: \\r\\n -> \\n, control characters removed, Unicode spaces (NBSP, ...) become
  ' ', trailing spaces removed. Prose only: runs of spaces collapse to one and more than
  one blank line to one (code keeps its indentation and layout).
  """

  type = '🔧 - NORMALIZE'
  name = '🧹 normalize'

  def __init__(self, ftfy_fix: bool = True, exclusion_writer=None):
    super().__init__()
    self.ftfy_fix = ftfy_fix
    self.exclusion_writer = exclusion_writer

  def normalize(self, text: str, code: bool) -> str:
    if self.ftfy_fix:
      text = ftfy.fix_text(text, normalization='NFC')
    else:
      text = unicodedata.normalize('NFC', text)
    text = text.replace('\r\n', '\n').replace('\r', '\n')
    text = _CONTROL.sub('', text)
    text = _SPACES.sub(' ', text)
    text = _TRAILING.sub('', text)
    if not code:
      text = re.sub(r' {2,}', ' ', text)
      text = _BLANKS.sub('\n\n', text)
    return text.strip('\n')

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    with self.exclusion_writer or contextlib.nullcontext() as writer:
      for doc in data:
        with self.track_time():
          before = doc.text
          doc.text = self.normalize(doc.text, is_code(doc))
        self.stat_update('total')
        if doc.text != before:
          self.stat_update('changed')
        if not doc.text.strip():
          self.stat_update('dropped_empty')
          if writer:
            doc.metadata['filter_reason'] = 'empty'
            writer.write(doc, rank)
          continue
        yield doc


class LanguageId(PipelineStep):
  """Tags each document with metadata language (ISO 639-1) and language_score (0..1)."""

  type = '🏷 - TAGGER'
  name = '🌍 language id (py3langid)'

  def __init__(self, max_chars: int = 5000):
    super().__init__()
    self.max_chars = max_chars

  @property
  def identifier(self) -> Any:
    return _identifier()

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    for doc in data:
      with self.track_time():
        if is_code(doc):
          doc.metadata['language'], doc.metadata['language_score'] = CODE, 1.0
        else:
          lang, score = self.identifier.classify(doc.text[:self.max_chars])
          doc.metadata['language'], doc.metadata['language_score'] = lang, round(float(score), 4)
      self.stat_update(f'language_{doc.metadata["language"]}')
      yield doc


@functools.cache
def _identifier() -> Any:
  """py3langid's model (in its wheel), loaded once per process (a few seconds)."""
  from py3langid.langid import MODEL_FILE, LanguageIdentifier
  return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageFilter(BaseFilter):
  """Keeps documents whose language is one of `languages` with score >= `min_score`."""

  name = '🌍 language filter'

  def __init__(self, languages: tuple[str, ...], min_score: float, exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.languages = tuple(languages)
    self.min_score = min_score

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    lang = doc.metadata.get('language')
    if self.languages and lang not in self.languages:
      return False, f'language_{lang}'
    if doc.metadata.get('language_score', 0.0) < self.min_score:
      return False, 'language_score'
    return True


class ProseOnly(BaseFilter):
  """`inner` (a datatrove filter) applied to prose documents; code documents pass."""

  def __init__(self, inner: BaseFilter):
    super().__init__(inner.exclusion_writer)
    self.inner = inner
    self.name = inner.name

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    if is_code(doc):
      self.stat_update('code_passed')
      return True
    return self.inner.filter(doc)


class RegexWords(WordTokenizer):
  """Words are runs of word characters; every other non-space character is its own token."""

  _WORD = re.compile(r'\w+|[^\w\s]')
  _SENT = re.compile(r'(?<=[.!?])\s+|\n{2,}')

  def __init__(self, language: str = 'en'):
    super().__init__(language)

  def word_tokenize(self, text: str) -> list[str]:
    return self._WORD.findall(text)

  def sent_tokenize(self, text: str) -> list[str]:
    return [s.strip() for s in self._SENT.split(text) if s.strip()]

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in self._SENT.finditer(text):
      if text[start:m.start()].strip():
        spans.append((start, m.start()))
      start = m.end()
    if text[start:].strip():
      spans.append((start, len(text)))
    return spans


# ---- PII ---------------------------------------------------------------------------

EMAIL = '<EMAIL>'
IP = '<IP_ADDRESS>'
PHONE = '<PHONE>'
SECRET = '<SECRET>'

# +1 (555) 123-4567, 555-123-4567, 555.123.4567, +44 20 7946 0958, +49 30 1234 5678
_PHONE = (r'(?<![\w.+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{4}'
          r'(?![\w-])')
# Well-known key formats, PEM private keys, and a quoted value assigned to a name that says
# it is a secret (password = '...', API_KEY: "...").
_KEY_FORMATS = (r'AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|sk-[A-Za-z0-9_-]{20,}|'
                r'xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|'
                r'-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z ]+ )?'
                r'PRIVATE KEY-----')
_ASSIGNED = re.compile(
    r'(?i)((?:password|passwd|secret|api_key|apikey|access_key|auth_token|token)'
    r'["\']?\s{0,3}[:=]\s{0,3}["\'])[^"\'\s]{8,}(?=["\'])')


class _Secrets(BaseFormatter):
  name = '🔑 secrets'

  def __init__(self, phones: bool, secrets: bool):
    super().__init__()
    self.replacers = []
    if phones:
      self.replacers.append(PIIReplacer(_PHONE, PHONE))
    if secrets:
      self.replacers.append(PIIReplacer(_KEY_FORMATS, SECRET))
    self.secrets = secrets

  def format(self, text: str) -> str:
    for r in self.replacers:
      text = r.replace(text)
    if self.secrets:
      text = _ASSIGNED.sub(lambda m: m.group(1) + SECRET, text)
    return text


class Pii(BaseFormatter):
  """datatrove's PIIFormatter (e-mails, public IPs) + phone numbers + secrets, placeholders."""

  name = '📞 PII'

  def __init__(self, emails: bool, ips: bool, phones: bool, secrets: bool):
    super().__init__()
    self.emails_ips = PIIFormatter(remove_emails=emails, remove_ips=ips,
                                   only_remove_public_ips=True, email_replacement=EMAIL,
                                   ip_replacement=IP)
    self.rest = _Secrets(phones, secrets)

  def format(self, text: str) -> str:
    return self.rest.format(self.emails_ips.format(text))

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    for doc in data:
      self.stat_update('total')
      with self.track_time():
        before = doc.text
        doc.text = self.format(doc.text)
      if doc.text != before:
        self.stat_update('changed')
        doc.metadata['pii_replaced'] = True
      yield doc
