"""`python -m lm <command> [--flags]`: runs one command of lm/cli (`python -m lm` lists them)."""

from __future__ import annotations

import importlib
import sys

from lm import cli


def _usage() -> str:
  width = max(len(n) for n in cli.COMMANDS)
  lines = [f'  {name:<{width}}  {help_}' for name, (_, help_) in cli.COMMANDS.items()]
  return ('usage: python -m lm <command> [--flags]   (python -m lm <command> --help)\n\n'
          'commands:\n' + '\n'.join(lines))


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in cli.COMMANDS:
    print(f'error: unknown command {name!r}\n\n{_usage()}', file=sys.stderr)
    sys.exit(2)
  sys.argv = [f'python -m lm {name}', *argv[2:]]  # before the import: flags read it
  module = importlib.import_module(cli.COMMANDS[name][0])
  module.run()


if __name__ == '__main__':
  main(sys.argv)
