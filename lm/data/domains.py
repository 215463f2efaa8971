"""Python source split into two domains: code (without docstrings and comments) and prose
(the docstrings and comments). Uses only the stdlib tokenizer, so it runs offline on the
embedded stdlib corpus."""

from __future__ import annotations

import ast
import io
import tokenize

from lm.data.sources import Document

_STATEMENT_START = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                    tokenize.ENCODING}
_SKIP = {tokenize.NL, tokenize.COMMENT}


def split_python(source: str) -> tuple[str, str]:
  """(code, prose) of one Python file; a file that does not tokenize is all code."""
  try:
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
  except (tokenize.TokenError, SyntaxError, IndentationError):
    return source, ''
  lines = source.splitlines(keepends=True)
  offsets = [0]
  for line in lines:
    offsets.append(offsets[-1] + len(line))
  spans, prose = [], []
  prev = tokenize.NEWLINE
  for i, tok in enumerate(tokens):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip('#').strip()
      if text and not text.startswith('!'):
        prose.append(text)
      spans.append((tok.start, tok.end))
    elif tok.type == tokenize.STRING and prev in _STATEMENT_START and _ends_statement(tokens, i):
      prose.append(_string_value(tok.string))
      spans.append((tok.start, tok.end))
    if tok.type not in _SKIP:
      prev = tok.type
  code = list(source)
  for (r0, c0), (r1, c1) in spans:
    start, end = offsets[r0 - 1] + c0, offsets[r1 - 1] + c1
    code[start:end] = [''] * (end - start)
  code_lines = [ln for ln in ''.join(code).splitlines() if ln.strip()]
  return '\n'.join(code_lines) + '\n' if code_lines else '', '\n\n'.join(p for p in prose if p)


def _ends_statement(tokens: list[tokenize.TokenInfo], i: int) -> bool:
  """Whether the string at i is a whole expression statement (a docstring-like string)."""
  for tok in tokens[i + 1:]:
    if tok.type == tokenize.COMMENT:
      continue
    return tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
  return True


def _string_value(literal: str) -> str:
  try:
    value = ast.literal_eval(literal)
  except (ValueError, SyntaxError):
    return literal
  text = value if isinstance(value, str) else literal
  return '\n'.join(line.strip() for line in text.strip().splitlines())


def split_documents(docs: list[Document], part: str) -> list[Document]:
  """The 'code' or 'prose' part of each Python document (empty parts are left out)."""
  index = {'code': 0, 'prose': 1}[part]
  out = []
  for doc in docs:
    text = split_python(doc.text)[index]
    if text.strip():
      out.append(Document(f'{part}/{doc.name}', text))
  return out
