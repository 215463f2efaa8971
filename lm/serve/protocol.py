"""The OpenAI-style completions protocol: request validation and response JSON.

A request is checked field by field before anything is queued; every problem is a
`RequestError` naming the field and the fix, which the app turns into a 4xx with an
OpenAI-style `{"error": {"message", "type", "param", "code"}}` body.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

MAX_BODY_BYTES = 1 << 20  # a larger request body is refused (413) before it is parsed
MAX_PROMPTS = 64  # prompts in one request (each becomes one choice and one batch row)
MAX_STOPS = 4  # stop strings per request, as in the OpenAI API
MAX_TEMPERATURE = 2.0  # the OpenAI API's bound
MAX_N = 16  # choices per prompt
MAX_LOGPROBS = 5  # alternatives per token (the OpenAI completions API's bound)
DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default
EXAMPLE = '{"prompt": "Hello", "max_tokens": 16}'

# Fields of the OpenAI completions API this server does not implement: named, not "unknown".
UNSUPPORTED = ('best_of', 'frequency_penalty', 'logit_bias', 'presence_penalty', 'suffix')


class RequestError(Exception):
  """A request the server refuses: HTTP status, OpenAI error type, the field at fault."""

  def __init__(self, message: str, *, param: str | None = None, status: int = 400,
               kind: str = 'invalid_request_error', code: str | None = None):
    super().__init__(message)
    self.message, self.param, self.status, self.kind, self.code = (
        message, param, status, kind, code)

  def to_json(self) -> dict[str, Any]:
    return error_json(self.message, kind=self.kind, param=self.param, code=self.code)


def error_json(message: str, *, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
  return {'error': {'message': message, 'type': kind, 'param': param, 'code': code}}


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
  """A validated POST /v1/completions body (defaults filled in)."""

  prompts: tuple[str | tuple[int, ...], ...]  # text, or token ids
  max_tokens: int = DEFAULT_MAX_TOKENS
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  seed: int | None = None
  stop: tuple[str, ...] = ()
  stream: bool = False
  n: int = 1
  logprobs: int | None = None  # alternatives per token; None = no logprobs
  echo: bool = False
  include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _stream_options(v: Any, stream: bool) -> bool:
  """include_usage of a stream_options object ({"include_usage": true})."""
  if v is None:
    return False
  if not stream:
    raise RequestError('stream_options is allowed only with "stream": true; remove it or '
                       'stream', param='stream_options')
  if not isinstance(v, dict) or set(v) - {'include_usage'}:
    raise RequestError('stream_options must be an object with the one field include_usage, '
                       f'got {json.dumps(v)[:100]}', param='stream_options')
  usage = v.get('include_usage', False)
  if not isinstance(usage, bool):
    raise RequestError(f'stream_options.include_usage must be true or false, got '
                       f'{_type_name(usage)} {usage!r}', param='stream_options')
  return usage


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
  return {dict: 'an object', list: 'an array', str: 'a string', bool: 'a boolean',
          int: 'an integer', float: 'a number', type(None): 'null'}.get(type(v), type(v).__name__)


def _check_text(s: str, where: str, param: str) -> None:
  """A JSON string may hold a lone UTF-16 surrogate (\\ud800) that is no Unicode text."""
  try:
    s.encode('utf-8')
  except UnicodeEncodeError as e:
    raise RequestError(f'{where} holds {s[e.start]!r} at character {e.start}, a lone UTF-16 '
                       'surrogate that is not Unicode text; send valid UTF-8 text (pair it '
                       'with its other half or remove it)', param=param) from None


def _token_ids(v: list, where: str) -> tuple[int, ...]:
  if not v:
    raise RequestError(f'{where} is an empty list of token ids; give at least one',
                       param='prompt')
  for i, t in enumerate(v):
    if not _is_int(t) or t < 0:
      raise RequestError(f'{where}[{i}] must be a token id (an integer >= 0), got '
                         f'{_type_name(t)} {t!r}', param='prompt')
  return tuple(v)


def _prompts(v: Any) -> tuple[str | tuple[int, ...], ...]:
  fix = 'give a non-empty string, a list of them, or token ids'
  if isinstance(v, list) and v and _is_int(v[0]):
    return (_token_ids(v, 'prompt'),)
  if isinstance(v, list) and v and all(isinstance(p, list) for p in v):
    if len(v) > MAX_PROMPTS:
      raise RequestError(f'prompt lists {len(v)} prompts; send at most {MAX_PROMPTS} per '
                         'request', param='prompt')
    return tuple(_token_ids(p, f'prompt[{i}]') for i, p in enumerate(v))
  if isinstance(v, str):
    if not v:
      raise RequestError(f'prompt is empty; {fix}', param='prompt')
    _check_text(v, 'prompt', 'prompt')
    return (v,)
  if not isinstance(v, list):
    raise RequestError(f'prompt must be a string or a list of strings, got {_type_name(v)}',
                       param='prompt')
  if not v:
    raise RequestError(f'prompt is an empty list; {fix}', param='prompt')
  if len(v) > MAX_PROMPTS:
    raise RequestError(f'prompt lists {len(v)} prompts; send at most {MAX_PROMPTS} per request',
                       param='prompt')
  for i, p in enumerate(v):
    if not isinstance(p, str):
      raise RequestError(f'prompt[{i}] must be a string, got {_type_name(p)} (a list of token '
                         'ids is a list of lists of integers)', param='prompt')
    if not p:
      raise RequestError(f'prompt[{i}] is empty; {fix}', param='prompt')
    _check_text(p, f'prompt[{i}]', 'prompt')
  return tuple(v)


def _stops(v: Any) -> tuple[str, ...]:
  stops = [v] if isinstance(v, str) else v
  if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
    raise RequestError(f'stop must be a string or a list of strings, got {_type_name(v)}',
                       param='stop')
  if len(stops) > MAX_STOPS:
    raise RequestError(f'stop lists {len(stops)} strings; give at most {MAX_STOPS}', param='stop')
  if not all(stops):
    raise RequestError('stop holds an empty string; remove it', param='stop')
  for i, stop in enumerate(stops):
    _check_text(stop, f'stop[{i}]' if isinstance(v, list) else 'stop', 'stop')
  return tuple(stops)


def _int_field(body: dict, name: str, lo: int, hi: int, what: str) -> int | None:
  v = body.get(name)
  if v is None:
    return None
  if not _is_int(v):
    raise RequestError(f'{name} must be an integer ({what}), got {_type_name(v)} {v!r}',
                       param=name)
  if not lo <= v <= hi:
    raise RequestError(f'{name}={v} is out of range; give an integer in [{lo}, {hi}] ({what})',
                       param=name)
  return v


def _number_field(body: dict, name: str, ok, bounds: str) -> float | None:
  v = body.get(name)
  if v is None:
    return None
  if not isinstance(v, int | float) or isinstance(v, bool):
    raise RequestError(f'{name} must be a number {bounds}, got {_type_name(v)} {v!r}', param=name)
  try:
    number = float(v)
  except OverflowError:  # an integer literal beyond any float
    number = math.inf
  if not (math.isfinite(number) and ok(number)):
    raise RequestError(f'{name}={number:g} is out of range; give a number {bounds}', param=name)
  return number


def _deep_field(body: bytes, limit: int = 64) -> str | None:
  """The top-level field of a JSON object body whose value nests deeper than `limit`."""
  text = body.decode('utf-8', 'replace')
  depth, key, i, n = 0, None, 0, len(text)
  expect_key = False
  while i < n:
    c = text[i]
    if c == '"':
      j = i + 1
      while j < n and text[j] != '"':
        j += 2 if text[j] == '\\' else 1
      if depth == 1 and expect_key:
        key, expect_key = text[i + 1:j], False
      i = j + 1
      continue
    if c in '[{':
      depth += 1
      if depth == 1 and c == '{':
        expect_key = True
      if depth > limit:
        return key if text.lstrip().startswith('{') else None
    elif c in ']}':
      depth -= 1
    elif c == ',' and depth == 1:
      expect_key = True
    i += 1
  return None


def parse_json_object(body: bytes, example: str = EXAMPLE) -> dict[str, Any]:
  """The JSON object of a request body; RequestError naming the problem otherwise."""
  if not body.strip():
    raise RequestError(f'the request body is empty; send a JSON object such as {example}')
  try:
    data = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(f'the request body is not valid JSON ({e}); send a JSON object such '
                       f'as {example}') from None
  except RecursionError:  # json's parser recurses once per nested array or object
    field = _deep_field(body)
    where = f'field {field!r}' if field else 'the request body'
    raise RequestError(f'{where} nests arrays or objects too deeply to parse; send a flat '
                       f'JSON object such as {example}', param=field) from None
  if not isinstance(data, dict):
    raise RequestError(f'the request body must be a JSON object such as {example}, got '
                       f'{_type_name(data)}')
  return data


def check_fields(data: dict, known: Sequence[str], unsupported: Sequence[str]) -> None:
  """RequestError naming the first field that is not supported or not known."""
  for name in data:
    if name in unsupported and data[name] is not None:
      raise RequestError(f'field {name!r} is not supported by this server; remove it',
                         param=name)
    if name not in known and name not in unsupported:
      raise RequestError(f'unknown field {name!r}; the accepted fields are '
                         f'{", ".join(known)}', param=name)


def sampling_fields(data: dict) -> dict[str, Any]:
  """The sampling and length fields completions and chat share (None where not given)."""
  stream = data.get('stream')
  if stream is not None and not isinstance(stream, bool):
    raise RequestError(f'stream must be true or false, got {_type_name(stream)} {stream!r}',
                       param='stream')
  for name in ('model', 'user'):
    if data.get(name) is not None and not isinstance(data[name], str):
      raise RequestError(f'{name} must be a string, got {_type_name(data[name])}', param=name)
    if data.get(name) is not None:
      _check_text(data[name], name, name)
  return dict(
      temperature=_number_field(data, 'temperature', lambda t: 0 <= t <= MAX_TEMPERATURE,
                                f'in [0, {MAX_TEMPERATURE:g}] (0 = greedy)'),
      top_p=_number_field(data, 'top_p', lambda p: 0 < p <= 1, 'in (0, 1] (1 = off)'),
      top_k=_int_field(data, 'top_k', 0, (1 << 31) - 1, '0 = off'),
      seed=_int_field(data, 'seed', 0, (1 << 32) - 1, 'the same seed gives the same text'),
      stop=None if data.get('stop') is None else _stops(data['stop']),
      n=_int_field(data, 'n', 1, MAX_N, 'choices per prompt'),
      stream=stream)


def parse_completion_request(body: bytes) -> CompletionRequest:
  """The validated request of a POST /v1/completions body; RequestError on any problem.

  Fields: prompt (required: text or token ids), max_tokens, temperature, top_p, top_k,
  seed, stop, n, stream, stream_options, logprobs, echo, model and user (accepted, not
  used). JSON null means "the default"."""
  data = parse_json_object(body)
  known = ('prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'n',
           'stream', 'stream_options', 'logprobs', 'echo', 'model', 'user')
  for name in data:
    if name in UNSUPPORTED:
      raise RequestError(f'field {name!r} is not supported by this server; remove it',
                         param=name)
    if name not in known:
      raise RequestError(f'unknown field {name!r}; the accepted fields are '
                         f'{", ".join(known)}', param=name)
  if data.get('prompt') is None:
    raise RequestError(f'prompt is required: a string or a list of strings, e.g. {EXAMPLE}',
                       param='prompt')
  prompts = _prompts(data['prompt'])
  echo = data.get('echo')
  if echo is not None and not isinstance(echo, bool):
    raise RequestError(f'echo must be true or false, got {_type_name(echo)} {echo!r}',
                       param='echo')
  fields = sampling_fields(data)
  fields.update(
      max_tokens=_int_field(data, 'max_tokens', 0 if echo else 1, 1 << 20,
                            'tokens to generate per prompt; 0 only with echo'),
      logprobs=_int_field(data, 'logprobs', 0, MAX_LOGPROBS, 'alternatives per token'),
      echo=echo,
      include_usage=_stream_options(data.get('stream_options'), bool(fields['stream'])))
  return CompletionRequest(prompts=prompts,
                           **{k: v for k, v in fields.items() if v is not None})


def check_context(prompt_ids: Sequence[Sequence[int]], max_tokens: int, context: int,
                  vocab_size: int | None = None) -> None:
  """RequestError unless every prompt plus max_tokens fits in `context` tokens (and its
  token ids are below `vocab_size`)."""
  for i, ids in enumerate(prompt_ids):
    which = f'prompt[{i}]' if len(prompt_ids) > 1 else 'the prompt'
    if not ids:
      raise RequestError(f'{which} encodes to no tokens; give some text', param='prompt')
    if vocab_size is not None and max(ids) >= vocab_size:
      raise RequestError(f'{which} holds token id {max(ids)}, outside the vocabulary of '
                         f'{vocab_size} tokens; give ids in [0, {vocab_size})', param='prompt')
    if len(ids) >= context:
      raise RequestError(f'{which} is {len(ids)} tokens but the context holds {context} '
                         f'(prompt + max_tokens); shorten it to under {context} tokens',
                         param='prompt')
    if len(ids) + max_tokens > context:
      raise RequestError(f'max_tokens={max_tokens} plus the {len(ids)} tokens of {which} exceed '
                         f'the context of {context} tokens; ask for at most '
                         f'{context - len(ids)} tokens or shorten the prompt',
                         param='max_tokens')


def completion_json(request_id: str, created: int, model: str, choices: list[dict],
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
  """An OpenAI `text_completion` object."""
  return {'id': request_id, 'object': 'text_completion', 'created': created, 'model': model,
          'choices': choices,
          'usage': {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
                    'total_tokens': prompt_tokens + completion_tokens}}


def choice_json(index: int, text: str, finish_reason: str | None,
                logprobs: dict | None = None) -> dict[str, Any]:
  return {'text': text, 'index': index, 'logprobs': logprobs, 'finish_reason': finish_reason}


def token_text(tokenizer, token: int) -> str:
  """A token's text in logprobs; `token_id:N` for one that is no whole character alone (a
  byte of a multi-byte character), so that distinct tokens keep distinct keys."""
  text = tokenizer.decode([token])
  return f'token_id:{token}' if '\ufffd' in text else text


def logprobs_json(tokenizer, scores, k: int, offset: int = 0) -> dict[str, Any]:
  """The completions API's logprobs object of `scores` (lm.serve.batcher.Score): tokens,
  token_logprobs, top_logprobs ({token text: logprob}, the k most likely, None where a
  token has no score) and text_offset (characters, from `offset`)."""
  out = {'tokens': [], 'token_logprobs': [], 'top_logprobs': [], 'text_offset': []}
  for s in scores:
    text = token_text(tokenizer, s.token)
    out['tokens'].append(text)
    out['token_logprobs'].append(s.logprob)
    top = None
    if s.logprob is not None:
      top = {}
      for token, lp in s.top[:k]:
        top.setdefault(token_text(tokenizer, token), lp)  # most likely first: keep the max
    out['top_logprobs'].append(top)
    out['text_offset'].append(offset)
    offset += len(text)
  return out


def sse(data: dict[str, Any] | str) -> bytes:
  """One server-sent event: `data: <json>` and a blank line."""
  payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
  return f'data: {payload}\n\n'.encode()
