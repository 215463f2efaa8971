"""The chat template a server renders `messages` with, picked once per run (`for_run`).

SFT's (lm/data/supervised.py), the one lm trains chats with:

    <|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n

replies end at `<|end|>`, and the prompt gets the bos token, as SFT records do. A model
imported from Hugging Face (tokenizer kind 'hf') that brings a template of its own, in its
tokenizer directory's chat_template.jinja or tokenizer_config.json ("chat_template": a
string, or a list of {"name", "template"} of which "default" is used), is served with that
one unless the run was fine-tuned since on lm's template (train.task 'sft' or 'dpo'). An HF
template renders as transformers' apply_chat_template renders it: Jinja in a sandbox with
trim_blocks and lstrip_blocks, the loop controls, `raise_exception`, a `tojson` that does
not escape HTML, `strftime_now`, the tokenizer's special tokens (bos_token, eos_token, ...)
and add_generation_prompt. Its replies end at the tokenizer's eos_token (tokenizer_config.json,
else special_tokens_map.json), the token HF chat models end a turn with and the id the
decoder stops on; the prompt gets no bos of ours (the template writes bos_token where the
model wants it, and transformers encodes the rendered chat without special tokens).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from etils import epath
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lm.compat.hf import HF_TOKENIZER_DIR
from lm.data.supervised import END_OF_TURN, sft_pieces
from lm.data.tokenizers.hf import CHAT_TEMPLATE_FILE as JINJA_FILE
from lm.data.tokenizers.hf import CONFIG_FILE, read_special_files, special_tokens
from lm.errors import UserError
from lm.serve.protocol import RequestError

SFT_SOURCE = 'lm/data/supervised.py'
ASSISTANT = '<|assistant|>\n'
# SFT's template in Jinja, for /tokenizer_info (lm-eval renders chats with it).
SFT_JINJA = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + END_OF_TURN + "{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")
TOKEN_NAMES = ('bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token',
               'mask_token')
TUNED_ON_SFT = ('sft', 'dpo')  # train.task values that train on lm's chat template


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """How chat messages become a prompt, and where the reply ends."""

  name: str  # "SFT's" or "the model's own"
  source: str  # the file it comes from
  text: str  # its Jinja source (/tokenizer_info)
  end_of_turn: str | None  # a stop string of every chat request (None: the eos id alone)
  add_bos: bool  # the rendered prompt gets the bos token prepended
  jinja: jinja2.Template | None = None  # None: SFT's, rendered by sft_pieces
  tokens: tuple[tuple[str, str], ...] = ()  # (bos_token, '<s>'), ...: template variables

  def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt of `messages` ({"role", "content"} dicts); a RequestError naming the
    messages field when the template refuses them (its raise_exception) or fails on them."""
    if self.jinja is None:
      text = ''.join(piece for piece, _ in sft_pieces({'messages': messages}))
      return text + (ASSISTANT if add_generation_prompt else '')
    try:
      return self.jinja.render(messages=[dict(m) for m in messages], tools=None,
                               documents=None, add_generation_prompt=add_generation_prompt,
                               **dict(self.tokens))
    except Exception as e:  # a template is code of the model's authors: any error is theirs
      raise RequestError(f"messages: the model's chat template ({self.source}) does not "
                         f'render these messages: {type(e).__name__}: {e}; change the '
                         'messages (roles, order) to what the template accepts',
                         param='messages') from None

  def describe(self) -> str:
    end = (f'replies end at {self.end_of_turn!r}' if self.end_of_turn else
           'replies end at the eos id (no eos_token string to stop on)')
    return f'{self.name}, from {self.source} ({end})'


SFT = ChatTemplate(name="SFT's", source=SFT_SOURCE, text=SFT_JINJA, end_of_turn=END_OF_TURN,
                   add_bos=True)


# ---- Hugging Face templates ---------------------------------------------------------------


class _Generation(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`, with which some templates mark the assistant's
  tokens (transformers' return_assistant_tokens_mask): here it renders its body alone."""

  tags = {'generation'}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

  def _body(self, caller) -> str:
    return caller()


def _raise_exception(message: str):
  raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
  # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def environment() -> ImmutableSandboxedEnvironment:
  """The Jinja environment HF chat templates are written for."""
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols, _Generation])
  env.filters['tojson'] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
  return env


def _template_text(directory: epath.Path, config: dict) -> tuple[str, str] | None:
  """(Jinja source, the file and key it is from) of the directory's template, if any."""
  jinja_file = directory / JINJA_FILE
  if jinja_file.is_file():
    return jinja_file.read_text(encoding='utf-8'), str(jinja_file)
  where = f'{directory / CONFIG_FILE} "chat_template"'
  value = config.get('chat_template')
  if value is None:
    return None
  if isinstance(value, str):
    return value, str(directory / CONFIG_FILE)
  named = {}
  if isinstance(value, list):
    for entry in value:
      if not (isinstance(entry, dict) and isinstance(entry.get('name'), str)
              and isinstance(entry.get('template'), str)):
        raise UserError(f'{where} lists {json.dumps(entry)[:80]}; each entry must be '
                        '{"name": str, "template": str}')
      named[entry['name']] = entry['template']
  else:
    raise UserError(f'{where} must be a string or a list of {{"name", "template"}}, got '
                    f'{type(value).__name__}')
  if 'default' not in named:
    raise UserError(f'{where} names templates {sorted(named)} but none is "default", the one '
                    f'served; rename one "default" or write it to {directory / JINJA_FILE}')
  return named['default'], f'{directory / CONFIG_FILE} (template "default")'


def read_hf(directory: str | epath.PathLike) -> ChatTemplate | None:
  """The chat template of the HF tokenizer directory, None when it has none; UserError
  naming the file when it does not parse."""
  directory = epath.Path(directory)
  files = read_special_files(directory)
  found = _template_text(directory, files.get(CONFIG_FILE, {}))
  if found is None:
    return None
  text, source = found
  try:
    compiled = environment().from_string(text)
  except jinja2.TemplateSyntaxError as e:
    raise UserError(f'{source}: the chat template does not parse (line {e.lineno}: '
                    f'{e.message}); fix it, or remove it to serve with SFT\'s template') from None
  tokens = special_tokens(files, TOKEN_NAMES)
  return ChatTemplate(name="the model's own", source=source, text=text,
                      end_of_turn=tokens.get('eos_token'), add_bos=False, jinja=compiled,
                      tokens=tuple(sorted(tokens.items())))


def _hf_dirs(run) -> list[epath.Path]:
  """Where an 'hf' run's tokenizer files are: the workdir's hf_tokenizer/ (lm.compat.hf
  copies them there on import), then data.tokenizer.path (a fine-tuned run's names its base's)."""
  dirs = [epath.Path(run.workdir) / HF_TOKENIZER_DIR]
  if run.config.data.tokenizer.get('path'):
    dirs.append(epath.Path(run.config.data.tokenizer.path))
  return dirs


def for_run(run) -> tuple[ChatTemplate, str]:
  """(the template `run` is served with, why): its HF tokenizer's own when it has one and was
  not fine-tuned on SFT's since, else SFT's."""
  if run.tokenizer.kind != 'hf':
    return SFT, f'the run\'s tokenizer is lm\'s own ({run.tokenizer.kind})'
  task = run.config.train.get('task', 'lm')
  if task in TUNED_ON_SFT:
    return SFT, f'the run was fine-tuned on it (train.task={task!r})'
  dirs = _hf_dirs(run)
  directory = next((d for d in dirs if d.is_dir()), None)
  if directory is None:
    return SFT, f'the files of its HF tokenizer are gone ({" and ".join(map(str, dirs))})'
  template = read_hf(directory)
  if template is None:
    return SFT, f'its HF tokenizer ({directory}) has no chat template'
  return template, f'its HF tokenizer ({directory}) has one'
