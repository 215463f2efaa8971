"""The import graph of lm/, read from the source with `ast`: data flows one way.

No import cycles; library code never imports a command (lm.cli, or a `python -m lm.X`
shim); lm.infer and lm.eval do not reach back into lm.train; no module is over the size
the house style allows.
"""

import ast
from pathlib import Path

import pytest

LM = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file()) / 'lm'
MAX_LINES = 420  # "no module over ~400 lines"


def _module_name(path: Path) -> str:
  parts = path.relative_to(LM.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in LM.rglob('*.py')}


def _is_shim(path: Path) -> bool:
  doc = ast.get_docstring(ast.parse(path.read_text())) or ''
  return doc.startswith('Shim:')


def _imports(path: Path) -> set[str]:
  """The lm modules `path` imports, anywhere in the file (function-local imports too)."""
  me = _module_name(path)
  package = me if path.name == '__init__.py' else me.rpartition('.')[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[:len(anchor) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      for a in node.names:
        full = f'{base}.{a.name}'
        out.add(full if full in MODULES else base)
  return {m for m in out if m in MODULES and m != me}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
  """Every strongly connected group of more than one module (Tarjan)."""
  index, low, stack, on_stack, groups = {}, {}, [], set(), []
  counter = [0]

  def visit(v: str) -> None:
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in GRAPH[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(sorted(group))

  for v in sorted(GRAPH):
    if v not in index:
      visit(v)
  return groups


def test_the_graph_is_read():
  # The check would pass vacuously on a broken reader: these edges exist for sure.
  assert 'lm.run' in GRAPH['lm.cli.generate']
  assert 'lm.errors' in GRAPH['lm.workdir']


def test_lm_has_no_import_cycles():
  assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle():
  GRAPH['lm.errors'].add('lm.workdir')  # errors -> workdir -> errors
  try:
    assert any({'lm.errors', 'lm.workdir'} <= set(g) for g in _cycles())
  finally:
    GRAPH['lm.errors'].discard('lm.workdir')


def test_library_code_never_imports_a_command():
  commands = {m for m in MODULES if m == 'lm.cli' or m.startswith('lm.cli.')}
  commands |= {m for m, p in MODULES.items() if _is_shim(p)}
  allowed = commands | {'lm.__main__'}
  bad = {m: sorted(GRAPH[m] & commands) for m in MODULES
         if m not in allowed and GRAPH[m] & commands}
  assert bad == {}


@pytest.mark.parametrize('lower', ['lm.infer', 'lm.eval', 'lm.model', 'lm.data', 'lm.parallel',
                                   'lm.config', 'lm.errors', 'lm.workdir', 'lm.run'])
def test_lower_layers_do_not_import_training(lower):
  mine = [m for m in MODULES if m == lower or m.startswith(lower + '.')]
  bad = {m: sorted(i for i in GRAPH[m] if i == 'lm.train' or i.startswith('lm.train.'))
         for m in mine}
  assert {m: v for m, v in bad.items() if v} == {}


def test_modules_are_small():
  sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
  assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
