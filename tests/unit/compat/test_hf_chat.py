"""A model imported from Hugging Face chats in its own template: `python -m lm.convert`'s
import copies chat_template.jinja, `python -m lm.serve` logs the template it picked and
renders chat requests and /tokenize messages with it (the ids transformers gives), export
writes it back; a run fine-tuned on SFT's template keeps SFT's, and a template that does not
parse stops the server at start-up naming the file."""

import dataclasses
import pathlib
import shutil
import sys

import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# The serve tests' server subprocess and HF tokenizer files (pytest puts each test file's
# own directory on sys.path; this file also uses the serve one's).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'serve'))
from test_chat_template import CHATML, CHATML_SPECIALS, write_chat_tokenizer  # noqa: E402
from test_convert import SENTENCES, base_config, hf_model  # noqa: E402, F401 - base_config: a fixture
from test_serve import Server  # noqa: E402

from lm.compat import hf as convert  # noqa: E402
from lm.config import ConfigDict  # noqa: E402
from lm.errors import UserError  # noqa: E402
from lm.run import load_run  # noqa: E402
from lm.serve import server as serve_lib  # noqa: E402
from lm.serve import templates  # noqa: E402

MESSAGES = [{'role': 'user', 'content': 'the quick brown fox'}]


@pytest.fixture(scope='module')
def imported(tmp_path_factory, base_config):  # noqa: F811 - test_convert's fixture
  """(the HF directory, the run imported from it): a random LLaMA and a ChatML tokenizer
  whose template is in chat_template.jinja."""
  root = tmp_path_factory.mktemp('hf_chat')
  hf_model('llama_gqa').save_pretrained(root / 'hf')
  write_chat_tokenizer(root / 'hf', CHATML, in_file=True, specials=CHATML_SPECIALS, bos=None,
                       eos='<|im_end|>', texts=SENTENCES)
  convert.import_hf(root / 'hf', root / 'work', base_config, log=lambda _: None)
  return root / 'hf', root / 'work'


@pytest.fixture(scope='module')
def server(imported, tmp_path_factory):
  s = Server(imported[1], tmp_path_factory.mktemp('log') / 'server.log', '--nowarmup',
             '--max_batch=2', '--prefill_chunk=16')
  yield s
  s.stop()


def test_the_served_import_chats_in_its_own_template(imported, server):
  hf_dir, work = imported
  copied = work / 'hf_tokenizer' / 'chat_template.jinja'
  assert copied.read_text() == CHATML  # the import kept it with the tokenizer's files
  assert (f"lm.serve: chat template: the model's own, from {copied} (replies end at "
          "'<|im_end|>')") in server.log.read_text()
  hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dir)
  rendered = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
  want = hf_tok.encode(rendered, add_special_tokens=False)
  assert hf_tok.convert_ids_to_tokens(want[:1]) == ['<|im_start|>']
  status, out, _ = server.request('POST', '/tokenize', {'messages': MESSAGES})
  assert status == 200 and out['tokens'] == want
  status, out, _ = server.request('POST', '/v1/chat/completions',
                                  {'messages': MESSAGES, 'max_tokens': 3, 'temperature': 0})
  assert status == 200, out
  assert out['usage']['prompt_tokens'] == len(want)
  assert 1 <= out['usage']['completion_tokens'] <= 3
  status, info, _ = server.request('GET', '/tokenizer_info')
  assert status == 200 and info['chat_template'] == CHATML
  status, out, _ = server.request('POST', '/v1/chat/completions', {'messages': [
      {'role': 'assistant', 'content': 'hi'}]})
  assert status == 400 and out['error']['param'] == 'messages'
  assert 'must start with a system or user message' in out['error']['message']


def test_export_writes_the_template_back(imported, tmp_path):
  convert.export_hf(imported[1], tmp_path / 'out', log=lambda _: None)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'out')
  assert tokenizer.chat_template == CHATML


def test_sft_tuned_runs_keep_sfts_and_a_broken_template_stops_the_start(imported, tmp_path):
  run = load_run(imported[1])
  assert templates.for_run(run)[0].source == str(imported[1] / 'hf_tokenizer' /
                                                 'chat_template.jinja')
  tuned = ConfigDict(run.config.to_dict())
  tuned.train.task = 'sft'
  template, why = templates.for_run(dataclasses.replace(run, config=tuned))
  assert template is templates.SFT and "train.task='sft'" in why
  copy = tmp_path / 'work'
  shutil.copytree(imported[1], copy)
  (copy / 'hf_tokenizer' / 'chat_template.jinja').write_text('{% if messages %}unclosed')
  with pytest.raises(UserError, match=r'hf_tokenizer/chat_template\.jinja: the chat template '
                                      r'does not parse \(line 1'):
    serve_lib.build(load_run(copy), warmup=False, log=lambda _: None)
