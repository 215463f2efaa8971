"""Chat completions and the tokenizer endpoints: request validation and response JSON.

Messages are rendered with the server's chat template (lm/serve/templates.py): SFT's,

    <|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n

whose replies run until the model writes the end-of-turn marker `<|end|>`, or an imported
model's own, whose replies end at its tokenizer's eos_token. The end of turn is a stop
string of every chat request; the model's end-of-text token ends a reply too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lm.serve import protocol
from lm.serve.protocol import RequestError, _check_text, _int_field, _type_name
from lm.serve.templates import SFT, ChatTemplate
from lm.serve.templates import SFT_JINJA as CHAT_TEMPLATE  # noqa: F401 - SFT's, by its old name

CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
ROLES = ('system', 'user', 'assistant')
CHAT_UNSUPPORTED = ('logprobs', 'top_logprobs', 'tools', 'tool_choice', 'functions',
                    'function_call', 'response_format', 'logit_bias', 'frequency_penalty',
                    'presence_penalty', 'stream_options', 'parallel_tool_calls', 'audio',
                    'modalities', 'prediction', 'reasoning_effort', 'service_tier', 'store',
                    'metadata', 'web_search_options')


@dataclasses.dataclass(frozen=True)
class ChatRequest:
  """A validated POST /v1/chat/completions body: the rendered prompt and the settings."""

  prompt: str
  max_tokens: int | None = None  # None: what the context leaves
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int | None = None
  stop: tuple[str, ...] = ()
  stream: bool = False
  n: int = 1


def render(messages: list[dict], add_generation_prompt: bool = True) -> str:
  """The messages as SFT's chat template renders them, then the assistant's turn."""
  return SFT.render(messages, add_generation_prompt)


def parse_messages(v: Any) -> list[dict]:
  if not isinstance(v, list) or not v:
    raise RequestError(f'messages must be a non-empty list of {{"role", "content"}} objects, '
                       f'e.g. {CHAT_EXAMPLE}', param='messages')
  out = []
  for i, m in enumerate(v):
    if not isinstance(m, dict):
      raise RequestError(f'messages[{i}] must be an object with role and content, got '
                         f'{_type_name(m)}', param='messages')
    extra = sorted(set(m) - {'role', 'content', 'name'})
    if extra:
      raise RequestError(f'messages[{i}] has field {extra[0]!r}, which is not supported; '
                         'give role and content', param='messages')
    if m.get('role') not in ROLES:
      raise RequestError(f'messages[{i}].role is {m.get("role")!r}; give one of '
                         f'{", ".join(ROLES)}', param='messages')
    if not isinstance(m.get('content'), str):
      raise RequestError(f'messages[{i}].content must be a string (text parts are not '
                         f'supported), got {_type_name(m.get("content"))}', param='messages')
    _check_text(m['content'], f'messages[{i}].content', 'messages')
    out.append({'role': m['role'], 'content': m['content']})
  return out


def parse_chat_request(body: bytes, template: ChatTemplate = SFT) -> ChatRequest:
  """The validated request of a POST /v1/chat/completions body, its messages rendered by
  `template`; RequestError otherwise."""
  data = protocol.parse_json_object(body, CHAT_EXAMPLE)
  known = ('messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p',
           'top_k', 'seed', 'stop', 'n', 'stream', 'model', 'user')
  protocol.check_fields(data, known, CHAT_UNSUPPORTED)
  if data.get('messages') is None:
    raise RequestError(f'messages is required, e.g. {CHAT_EXAMPLE}', param='messages')
  prompt = template.render(parse_messages(data['messages']))
  fields = protocol.sampling_fields(data)
  max_tokens = _int_field(data, 'max_tokens', 1, 1 << 20, 'tokens to generate per choice')
  most = _int_field(data, 'max_completion_tokens', 1, 1 << 20, 'tokens to generate per choice')
  fields['max_tokens'] = most if most is not None else max_tokens
  stop = fields.pop('stop') or ()
  end = (template.end_of_turn,) if template.end_of_turn else ()
  return ChatRequest(prompt=prompt, stop=tuple(stop) + end,
                     **{k: v for k, v in fields.items() if v is not None})


def chat_json(request_id: str, created: int, model: str, choices: list[tuple[str, str]],
              prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
  """A `chat.completion` object of (content, finish_reason) per choice."""
  return {'id': request_id, 'object': 'chat.completion', 'created': created, 'model': model,
          'choices': [{'index': i, 'message': {'role': 'assistant', 'content': text},
                       'logprobs': None, 'finish_reason': reason}
                      for i, (text, reason) in enumerate(choices)],
          'usage': {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
                    'total_tokens': prompt_tokens + completion_tokens}}


def chat_chunk(request_id: str, created: int, model: str, index: int, delta: dict,
               finish_reason: str | None) -> dict[str, Any]:
  return {'id': request_id, 'object': 'chat.completion.chunk', 'created': created,
          'model': model, 'choices': [{'index': index, 'delta': delta, 'logprobs': None,
                                       'finish_reason': finish_reason}]}


# ---- /tokenize, /detokenize ----------------------------------------------------------------


def parse_tokenize(body: bytes, template: ChatTemplate = SFT) -> tuple[str, bool]:
  """(text, add_special_tokens) of a /tokenize body: {"prompt"}, or {"messages"} rendered by
  `template`. add_special_tokens (prepend bos) defaults to true for a prompt and, for
  messages, to what a chat request does with them (`template.add_bos`), so that the count
  is the chat's prompt_tokens."""
  data = protocol.parse_json_object(body, '{"prompt": "Hello"}')
  protocol.check_fields(data, ('prompt', 'messages', 'add_special_tokens',
                               'add_generation_prompt', 'model'), ())
  chat = data.get('messages') is not None
  special = data.get('add_special_tokens')
  if special is None:
    special = template.add_bos if chat else True
  if not isinstance(special, bool):
    raise RequestError('add_special_tokens must be true or false', param='add_special_tokens')
  if chat:
    gen = data.get('add_generation_prompt', True)
    if not isinstance(gen, bool):
      raise RequestError('add_generation_prompt must be true or false',
                         param='add_generation_prompt')
    return template.render(parse_messages(data['messages']), gen), special
  prompt = data.get('prompt')
  if not isinstance(prompt, str):
    raise RequestError(f'prompt must be a string, got {_type_name(prompt)}', param='prompt')
  _check_text(prompt, 'prompt', 'prompt')
  return prompt, special


def parse_detokenize(body: bytes, vocab_size: int) -> list[int]:
  data = protocol.parse_json_object(body, '{"tokens": [1, 2, 3]}')
  protocol.check_fields(data, ('tokens', 'model'), ())
  tokens = data.get('tokens')
  if not isinstance(tokens, list):
    raise RequestError(f'tokens must be a list of token ids, got {_type_name(tokens)}',
                       param='tokens')
  for i, t in enumerate(tokens):
    if not protocol._is_int(t) or not 0 <= t < vocab_size:
      raise RequestError(f'tokens[{i}] = {t!r} is not a token id in [0, {vocab_size})',
                         param='tokens')
  return tokens
