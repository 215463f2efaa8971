"""lm/serve/templates.py: an HF tokenizer directory's chat template renders as transformers'
apply_chat_template renders it (the files written here, a tokenizer trained here: no
download), in each place transformers reads it from; a template that refuses messages is a
400 naming `messages`, one that does not parse fails naming its file."""

import json
import pathlib

import pytest

transformers = pytest.importorskip('transformers')

from lm.errors import UserError  # noqa: E402
from lm.serve import chat, templates  # noqa: E402
from lm.serve.protocol import RequestError  # noqa: E402

CHATML_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
# Qwen2's template as it is shaped: a default system turn, one line per message, the
# assistant's opening line with add_generation_prompt; and a refusal of a leading reply.
CHATML = (
    "{%- if messages[0]['role'] == 'assistant' %}\n"
    "  {{- raise_exception('Conversations must start with a system or user message') }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "  {%- if loop.first and messages[0]['role'] != 'system' %}\n"
    "    {{- '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}\n"
    "  {%- endif %}\n"
    "  {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "  {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
# LLaMA-2's shape: bos_token / eos_token variables, a system prompt folded into the first
# user turn, strip, roles that must alternate (raise_exception), loop controls; tojson,
# which must not escape HTML as Jinja's own filter does.
LLAMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}\n"
    "{% for message in messages %}\n"
    "  {% if message['role'] == 'system' %}{% set ns.system = message['content'] %}"
    "{% continue %}{% endif %}\n"
    "  {% if (message['role'] == 'user') != (loop.index0 % 2 == (1 if ns.system else 0)) %}\n"
    "    {{ raise_exception('Conversation roles must alternate user/assistant/user/...') }}\n"
    "  {% endif %}\n"
    "  {% if message['role'] == 'user' %}\n"
    "    {{ '[INST] ' + (('<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n') if ns.system and "
    "loop.index0 == 1 else '') + message['content'] | trim + ' [/INST]' }}\n"
    "  {% else %}\n"
    "    {{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{% generation %}{% endgeneration %}\n"
    "  {% endif %}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}{{ ' meta ' + {'n': messages | length, 'last': "
    "messages[-1]['content']} | tojson }}{% endif %}")
CONVERSATIONS = [
    [{'role': 'user', 'content': 'hi'}],
    [{'role': 'system', 'content': 'you are terse'}, {'role': 'user', 'content': 'a < b & "c"'}],
    [{'role': 'user', 'content': ' one '}, {'role': 'assistant', 'content': 'two'},
     {'role': 'user', 'content': 'three\nlines'}],
    [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'q'},
     {'role': 'assistant', 'content': "it's <b>"}, {'role': 'user', 'content': 'ok'}],
]


def write_chat_tokenizer(directory: pathlib.Path, template, *, in_file: bool = False,
                         specials=('<s>', '</s>', '<pad>'), bos='<s>', eos='</s>',
                         texts=('hello world', 'the quick brown fox')) -> None:
  """A byte-level BPE trained here as tokenizer.json, and tokenizer_config.json written as
  the Hub's are, the template in its "chat_template" or (in_file) in chat_template.jinja."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  directory.mkdir(parents=True, exist_ok=True)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(list(texts) * 20, trainers.BpeTrainer(
      vocab_size=300, special_tokens=list(specials),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok.save(str(directory / 'tokenizer.json'))
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': eos,
            'bos_token': bos and {'__type': 'AddedToken', 'content': bos, 'lstrip': False,
                                  'normalized': False, 'rstrip': False, 'single_word': False},
            'model_max_length': 64}  # bos as older Hub files have it: an AddedToken object
  if in_file:
    (directory / 'chat_template.jinja').write_text(template)
  else:
    config['chat_template'] = template
  (directory / 'tokenizer_config.json').write_text(json.dumps(config, indent=2))


def transformers_render(directory: pathlib.Path, messages, add_generation_prompt=True) -> str:
  tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
  return tokenizer.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize('name,template,specials,bos,eos', [
    ('chatml', CHATML, CHATML_SPECIALS, None, '<|im_end|>'),
    ('llama', LLAMA, ['<s>', '</s>', '<pad>'], '<s>', '</s>')])
def test_hf_templates_render_as_transformers_renders_them(tmp_path, name, template, specials,
                                                          bos, eos):
  write_chat_tokenizer(tmp_path, template, specials=specials, bos=bos, eos=eos)
  ours = templates.read_hf(tmp_path)
  assert ours.source == str(tmp_path / 'tokenizer_config.json') and ours.text == template
  assert ours.end_of_turn == eos and not ours.add_bos  # the template writes bos_token itself
  for messages in CONVERSATIONS:
    for gen in (True, False):
      assert ours.render(messages, gen) == transformers_render(tmp_path, messages, gen)
  if name == 'chatml':  # the chat request: the same prompt, and the reply ends at <|im_end|>
    req = chat.parse_chat_request(json.dumps({'messages': CONVERSATIONS[2],
                                              'stop': ['\n\n']}).encode(), ours)
    assert req.prompt == transformers_render(tmp_path, CONVERSATIONS[2])
    assert req.stop == ('\n\n', '<|im_end|>')
    text, special = chat.parse_tokenize(json.dumps({'messages': CONVERSATIONS[0]}).encode(),
                                        ours)
    assert text == transformers_render(tmp_path, CONVERSATIONS[0]) and special is False


def test_chat_template_jinja_wins_and_a_named_list_serves_its_default(tmp_path):
  write_chat_tokenizer(tmp_path / 'file', CHATML, in_file=True, specials=CHATML_SPECIALS,
                       bos=None, eos='<|im_end|>')
  config = json.loads((tmp_path / 'file' / 'tokenizer_config.json').read_text())
  config['chat_template'] = 'ignored: chat_template.jinja wins'
  (tmp_path / 'file' / 'tokenizer_config.json').write_text(json.dumps(config))
  ours = templates.read_hf(tmp_path / 'file')
  assert ours.source == str(tmp_path / 'file' / 'chat_template.jinja')
  messages = CONVERSATIONS[1]
  assert ours.render(messages) == transformers_render(tmp_path / 'file', messages)

  named = [{'name': 'tool_use', 'template': 'tools {{ messages | length }}'},
           {'name': 'default', 'template': CHATML}]
  write_chat_tokenizer(tmp_path / 'list', named, specials=CHATML_SPECIALS, bos=None,
                       eos='<|im_end|>')
  ours = templates.read_hf(tmp_path / 'list')
  assert ours.text == CHATML and 'template "default"' in ours.source
  assert ours.render(messages) == transformers_render(tmp_path / 'list', messages)

  write_chat_tokenizer(tmp_path / 'none', None)
  assert templates.read_hf(tmp_path / 'none') is None  # no template: the server keeps SFT's


def test_a_refused_conversation_is_a_400_naming_messages(tmp_path):
  write_chat_tokenizer(tmp_path, LLAMA)
  ours = templates.read_hf(tmp_path)
  body = {'messages': [{'role': 'user', 'content': 'a'}, {'role': 'user', 'content': 'b'}]}
  with pytest.raises(RequestError, match='roles must alternate') as e:
    chat.parse_chat_request(json.dumps(body).encode(), ours)
  assert e.value.param == 'messages' and e.value.status == 400
  assert str(tmp_path / 'tokenizer_config.json') in e.value.message
  with pytest.raises(RequestError, match='roles must alternate'):
    chat.parse_tokenize(json.dumps(body).encode(), ours)


def test_a_template_that_does_not_parse_fails_naming_its_file(tmp_path):
  write_chat_tokenizer(tmp_path / 'bad', "{% for m in messages %}{{ m['content'] }}",
                       in_file=True)
  with pytest.raises(UserError, match=r'bad/chat_template\.jinja: the chat template does not '
                                      r'parse \(line 1: .*endfor'):
    templates.read_hf(tmp_path / 'bad')
  write_chat_tokenizer(tmp_path / 'nameless', [{'name': 'tool_use', 'template': 'x'}])
  with pytest.raises(UserError, match=r'tokenizer_config\.json "chat_template" names '
                                      r"templates \['tool_use'\] but none is \"default\""):
    templates.read_hf(tmp_path / 'nameless')


def test_the_sft_template_is_the_default_and_unchanged():
  messages = CONVERSATIONS[3]
  assert templates.SFT.render(messages) == chat.render(messages) == (
      "<|system|>\ns\n<|user|>\nq\n<|assistant|>\nit's <b><|end|>\n<|user|>\nok\n"
      '<|assistant|>\n')
  req = chat.parse_chat_request(json.dumps({'messages': messages}).encode())
  assert req.prompt == chat.render(messages) and req.stop == ('<|end|>',)
  assert chat.parse_tokenize(json.dumps({'messages': messages}).encode())[1] is True
  assert templates.SFT.add_bos and templates.SFT.text == chat.CHAT_TEMPLATE
