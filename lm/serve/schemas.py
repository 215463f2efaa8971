"""Typed request and response models of the API, published at /openapi.json.

Requests are validated by lm/serve/protocol.py and chat.py (their errors name the field
and the fix, which a generic validator cannot); these pydantic models declare the same
shapes for the schema, and `openapi` puts the request models into it.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class StreamOptions(BaseModel):
  include_usage: bool = Field(False, description='A last chunk, with no choices, carries the '
                              'usage of the whole request.')


class CompletionRequest(BaseModel):
  prompt: str | list[str] | list[int] | list[list[int]] = Field(
      description='Text, texts, token ids or lists of token ids (one choice set each).')
  max_tokens: int = Field(16, ge=0, description='Tokens to generate (0 only with echo).')
  temperature: float = Field(1.0, ge=0, le=2, description='0 = greedy.')
  top_p: float = Field(1.0, gt=0, le=1)
  top_k: int = Field(0, ge=0, description='0 = off.')
  seed: int | None = Field(None, ge=0, lt=2**32, description='Choice j draws with seed + j.')
  stop: str | list[str] | None = Field(None, description='Up to 4 stop strings.')
  n: int = Field(1, ge=1, le=16, description='Choices per prompt.')
  stream: bool = False
  stream_options: StreamOptions | None = Field(None, description='Only with stream.')
  logprobs: int | None = Field(None, ge=0, le=5, description='Alternatives per token.')
  echo: bool = Field(False, description="Return the prompt's tokens and logprobs first.")
  model: str | None = None
  user: str | None = None


class ChatMessage(BaseModel):
  role: Literal['system', 'user', 'assistant']
  content: str


class ChatCompletionRequest(BaseModel):
  messages: list[ChatMessage]
  max_tokens: int | None = Field(None, ge=1, description='Default: what the context leaves.')
  max_completion_tokens: int | None = Field(None, ge=1)
  temperature: float = Field(1.0, ge=0, le=2)
  top_p: float = Field(1.0, gt=0, le=1)
  top_k: int = Field(0, ge=0)
  seed: int | None = Field(None, ge=0, lt=2**32)
  stop: str | list[str] | None = None
  n: int = Field(1, ge=1, le=16)
  stream: bool = False
  model: str | None = None
  user: str | None = None


class Logprobs(BaseModel):
  tokens: list[str]
  token_logprobs: list[float | None]
  top_logprobs: list[dict[str, float] | None]
  text_offset: list[int]


class CompletionChoice(BaseModel):
  text: str
  index: int
  logprobs: Logprobs | None = None
  finish_reason: Literal['stop', 'length'] | None = None


class Usage(BaseModel):
  prompt_tokens: int
  completion_tokens: int
  total_tokens: int


class CompletionResponse(BaseModel):
  id: str
  object: Literal['text_completion'] = 'text_completion'
  created: int
  model: str
  choices: list[CompletionChoice]
  usage: Usage


class ChatChoice(BaseModel):
  index: int
  message: ChatMessage
  logprobs: None = None
  finish_reason: Literal['stop', 'length'] | None = None


class ChatCompletionResponse(BaseModel):
  id: str
  object: Literal['chat.completion'] = 'chat.completion'
  created: int
  model: str
  choices: list[ChatChoice]
  usage: Usage


class TokenizeRequest(BaseModel):
  prompt: str | None = None
  messages: list[ChatMessage] | None = None
  add_special_tokens: bool | None = Field(
      None, description='Prepend the bos token. Default: true for a prompt; for messages, '
      "what a chat request does (true with SFT's template, false with an HF model's own)")
  add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
  count: int
  max_model_len: int
  tokens: list[int]


class DetokenizeRequest(BaseModel):
  tokens: list[int]


class DetokenizeResponse(BaseModel):
  prompt: str


class TokenizerInfo(BaseModel):
  tokenizer_class: str
  bos_token: str | None
  eos_token: str | None
  pad_token: str | None
  bos_token_id: int
  eos_token_id: int
  vocab_size: int
  model_max_length: int
  chat_template: str


class ErrorBody(BaseModel):
  message: str
  type: str
  param: str | None = None
  code: str | None = None


class ErrorResponse(BaseModel):
  error: ErrorBody


REQUESTS = {'/v1/completions': CompletionRequest, '/v1/chat/completions': ChatCompletionRequest,
            '/tokenize': TokenizeRequest, '/detokenize': DetokenizeRequest}
ERRORS = {code: {'model': ErrorResponse} for code in (400, 401, 413, 429, 500, 503)}


def request_body(path: str) -> dict[str, Any]:
  """openapi_extra of a route whose body the route parses itself."""
  name = REQUESTS[path].__name__
  return {'requestBody': {'required': True, 'content': {'application/json': {
      'schema': {'$ref': f'#/components/schemas/{name}'}}}}}


def install_openapi(app: FastAPI) -> None:
  """app.openapi() builds the schema once, with the request models in its components."""
  def openapi() -> dict[str, Any]:
    if app.openapi_schema is None:
      schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
      components = schema.setdefault('components', {}).setdefault('schemas', {})
      for model in REQUESTS.values():
        js = model.model_json_schema(ref_template='#/components/schemas/{model}')
        components.update(js.pop('$defs', {}))
        components[model.__name__] = js
      app.openapi_schema = schema
    return app.openapi_schema
  app.openapi = openapi
