"""Fine-tuning records generated offline from the embedded Python stdlib corpus.

  classify  {'text', 'label'}: is a snippet a function's docstring or a piece of its code?
            (about half each; the model has to tell prose from Python)
  sft       {'prompt', 'response'}: given a function's docstring, write its `def` line.

Every record has a stable 'name' (file:function) that the train/validation split hashes.
Nothing is downloaded: the texts come from the stdlib files lm.data.sources lists.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator

from lm.data import sources

SNIPPET_CHARS = 160  # classify: characters per snippet
DEFAULT_LIMIT = 20_000  # records when data.max_docs is 0


def _functions() -> Iterator[tuple[str, ast.FunctionDef, str, list[str]]]:
  """(name, node, docstring, source lines) of every documented stdlib function, in order."""
  for rel, path in sources.stdlib_files():
    text, _ = sources.decode_utf8(path.read_bytes())
    try:
      tree = ast.parse(text)
    except (SyntaxError, ValueError):
      continue
    lines = text.splitlines()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(node.body) > 1:
          yield f'{rel}:{node.lineno}:{node.name}', node, doc, lines


def _body_code(node: ast.FunctionDef, lines: list[str]) -> str:
  """The function's code after its docstring (whole lines), dedented."""
  first, last = node.body[1].lineno, node.body[-1].end_lineno or node.body[-1].lineno
  return textwrap.dedent('\n'.join(lines[first - 1:last])).strip()


def _snippet(text: str) -> str:
  return text.strip()[:SNIPPET_CHARS]


def classify_records(limit: int = 0) -> list[dict]:
  """Docstring-or-code snippets: one of each per documented stdlib function (up to `limit`)."""
  limit = limit or DEFAULT_LIMIT
  out: list[dict] = []
  for name, node, doc, lines in _functions():
    code = _body_code(node, lines)
    if len(doc) < 20 or len(code) < 20:
      continue
    out.append({'name': f'{name}#doc', 'text': _snippet(doc), 'label': 'docstring'})
    out.append({'name': f'{name}#code', 'text': _snippet(code), 'label': 'code'})
    if len(out) >= limit:
      break
  return out[:limit]


def sft_records(limit: int = 0) -> list[dict]:
  """Docstring -> `def` line of documented stdlib functions (up to `limit`)."""
  limit = limit or DEFAULT_LIMIT
  out: list[dict] = []
  for name, node, doc, _ in _functions():
    summary = doc.strip().split('\n\n')[0].strip()[:200]
    signature = f'def {node.name}({ast.unparse(node.args)}):'
    out.append({'name': name, 'prompt': f'Docstring: {summary}\nSignature: ',
                'response': signature})
    if len(out) >= limit:
      break
  return out
