"""Fine-tuning: init_from, SFT masks and packing, LoRA end to end, classification pooling.

One tiny base language model is trained once per module; the fine-tunes start from it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetune_data import write_corpus, write_sft
from train_fixtures import module_xla_cache, tiny  # noqa: F401  (an autouse fixture)

from configs.default import get_config
from lm.checkpoint import CheckpointError
from lm.config import ConfigDict
from lm.data import DataError, supervised
from lm.data.tokenizers import ByteTokenizer
from lm.model import ModelConfig, ModelDef, lora
from lm.run import load_run, write_run
from lm.train import Trainer
from lm.train.metrics import read_metrics
from lm.train.step import token_losses

SEQ_LEN = 32


def _tiny(c, cache):
  return tiny(c, cache, seq_len=SEQ_LEN)


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  """(config, workdir, final metrics) of a 10-step language model on a sentence corpus."""
  root = tmp_path_factory.mktemp('base')
  c = _tiny(get_config(), root / 'cache')
  c.data.source, c.data.path = 'text', str(write_corpus(root / 'corpus'))
  c.train.steps = c.train.eval_every = c.checkpoint.every = 10
  workdir = root / 'run'
  final = Trainer(c, str(workdir), log=lambda _: None).run()
  return c, workdir, final


def _copy(cfg, overrides: dict):
  """A copy of `cfg` with dotted keys set."""
  out = ConfigDict(cfg.to_dict())
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = out
    for part in parents:
      node = node[part]
    node[leaf] = value
  return out


# ---- init_from ------------------------------------------------------------------------------


def test_init_from_reproduces_eval_loss_with_a_fresh_optimizer(base_run, tmp_path):
  cfg, workdir, final = base_run
  trainer = Trainer(_copy(cfg, {'init_from': str(workdir)}), str(tmp_path / 'ft'),
                    log=lambda _: None)
  try:
    state, _ = trainer._initial_state()
  finally:
    trainer.checkpoints.close()
  assert int(state['step']) == 0
  assert trainer.evaluate(state['params'])['eval/loss'] == pytest.approx(
      final['eval/loss'], abs=1e-5)
  moments = [x for x in jax.tree.leaves(state['opt_state']) if x.dtype == jnp.float32]
  assert moments and all(not np.any(np.asarray(x)) for x in moments)  # fresh: zeros

  with_opt = Trainer(_copy(cfg, {'init_from': str(workdir), 'init_from_opt_state': True}),
                     str(tmp_path / 'ft2'), log=lambda _: None)
  try:
    state2, _ = with_opt._initial_state()
  finally:
    with_opt.checkpoints.close()
  assert int(state2['step']) == 0
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(state2['opt_state'])
             if x.dtype == jnp.float32)


def test_init_from_names_a_mismatched_parameter_and_a_non_checkpoint(base_run, tmp_path):
  cfg, workdir, _ = base_run
  wider = Trainer(_copy(cfg, {'init_from': str(workdir), 'model.mlp_dim': 96}),
                  str(tmp_path / 'a'), log=lambda _: None)
  with pytest.raises(CheckpointError, match=r"parameter 'blocks\.mlp\.(up|down)\.kernel'"):
    try:
      wider._initial_state()
    finally:
      wider.checkpoints.close()
  with pytest.raises(DataError, match=r'init_from=.* holds another tokenizer \(byte, vocabulary '
                     r"259\).*the base run's data.tokenizer"):
    Trainer(_copy(cfg, {'init_from': str(workdir), 'data.tokenizer.kind': 'char'}),
            str(tmp_path / 'c'), log=lambda _: None)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(CheckpointError, match='holds no lm checkpoint'):  # found at start-up
    Trainer(_copy(cfg, {'init_from': str(tmp_path / 'empty')}), str(tmp_path / 'b'),
            log=lambda _: None)


# ---- SFT data -------------------------------------------------------------------------------


def _sft_rows(records, seq_len=SEQ_LEN):
  tok = ByteTokenizer()
  rows, truncated = supervised.pack_sft([supervised.encode_sft(tok, r) for r in records], seq_len)
  return tok, rows, truncated


def test_sft_weights_are_exactly_the_response_tokens_of_each_packed_record():
  records = [{'prompt': 'Q: one? ', 'response': 'A1'}, {'prompt': 'Q: two? ', 'response': 'B22'},
             {'prompt': 'Q: three? ', 'response': 'C333'}]
  tok, rows, truncated = _sft_rows(records)
  assert truncated == 0 and len(rows) == 2  # records are packed whole: 2 fit in a row
  batch = supervised.sft_batch(rows)
  trained = [tok.decode(batch['targets'][r][batch['weights'][r] > 0]) for r in range(len(rows))]
  assert trained == ['A1B22', 'C333']
  # Each response's eos is trained and nothing crosses a record boundary.
  eos_trained = (batch['targets'] == tok.eos_id) & (batch['weights'] > 0)
  assert eos_trained.sum() == 3
  assert not np.any(batch['weights'] * (batch['segment_ids'] == 0))


def test_sft_chat_messages_train_only_assistant_turns():
  record = {'messages': [{'role': 'system', 'content': 'be brief'},
                         {'role': 'user', 'content': 'hi'},
                         {'role': 'assistant', 'content': 'hello'},
                         {'role': 'user', 'content': 'bye'},
                         {'role': 'assistant', 'content': 'ciao'}]}
  tok = ByteTokenizer()
  tokens, trained = supervised.encode_sft(tok, record)
  assert tok.decode(tokens[trained > 0]) == 'hello<|end|>ciao<|end|>'
  assert tokens[-1] == tok.eos_id and trained[-1] == 1
  assert '<|user|>\nhi\n<|assistant|>\n' in tok.decode(tokens)


def test_changing_a_prompt_label_changes_neither_loss_nor_gradients():
  records = [{'prompt': 'Q: one? ', 'response': 'A1'}, {'prompt': 'Q: two? ', 'response': 'B2'}]
  _, rows, _ = _sft_rows(records)
  batch = supervised.sft_batch(rows)
  model_def = ModelDef.create(ModelConfig(vocab_size=259, num_layers=1, width=32, num_heads=2,
                                          num_kv_heads=2, mlp_dim=64, max_len=SEQ_LEN))
  params = jax.jit(model_def.init_params)(jax.random.key(0))

  def loss(params, batch):
    ce, w = token_losses(model_def, params, {k: jnp.asarray(v) for k, v in batch.items()}, None)
    return jnp.sum(ce * w) / jnp.sum(w)

  grad = jax.jit(jax.value_and_grad(loss))
  value, grads = grad(params, batch)
  prompt_t = int(np.flatnonzero((batch['weights'][0] == 0) & (batch['segment_ids'][0] > 0))[3])
  changed = {**batch, 'targets': batch['targets'].copy()}
  changed['targets'][0, prompt_t] = (changed['targets'][0, prompt_t] + 7) % 259
  value2, grads2 = grad(params, changed)
  assert float(value2) == float(value)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2),
                                                  strict=True))
  response_t = int(np.flatnonzero(batch['weights'][0] > 0)[0])  # the control: a response label
  changed['targets'][0, response_t] = (changed['targets'][0, response_t] + 7) % 259
  assert float(grad(params, changed)[0]) != float(value)


def test_sft_records_with_missing_fields_name_the_line(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text(json.dumps({'prompt': 'x', 'response': 'y'}) + '\n' + json.dumps({'prompt': 'x'})
                  + '\n')
  c = get_config()
  c.data.source, c.data.path, c.data.format = 'text', str(path), 'sft'
  with pytest.raises(Exception, match=r"bad\.jsonl:2: an sft record needs 'prompt' and"):
    supervised.read_records(c.data, log=lambda _: None)


# ---- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_sft_from_init_from_trains_only_adapters_and_merges(base_run, tmp_path):
  cfg, workdir, _ = base_run
  logs = []
  c = _copy(cfg, {
      'init_from': str(workdir), 'data.format': 'sft', 'train.task': 'sft',
      'data.path': str(write_sft(tmp_path / 'sft' / 'train.jsonl')),
      'lora.rank': 4, 'lora.targets': ('qkv', 'out', 'mlp_in', 'mlp_out'), 'lora.dropout': 0.1,
      'train.steps': 10, 'train.eval_every': 10, 'checkpoint.every': 10})
  final = Trainer(c, str(tmp_path / 'lora'), log=logs.append).run()
  text = '\n'.join(logs)
  assert 'freshly initialised' in text and '.lora' in text
  assert 'LoRA rank 4' in text and 'trainable' in text and 'saves' in text
  rows = read_metrics(tmp_path / 'lora' / 'metrics.jsonl')
  assert rows[-1]['train/loss'] < rows[0]['train/loss']

  base = jax.device_get(load_run(workdir).params)
  tuned = load_run(tmp_path / 'lora')
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tuned.params))[0]
  base_flat = {jax.tree_util.keystr(p): x for p, x in
               jax.tree_util.tree_flatten_with_path(base)[0]}
  changed = [jax.tree_util.keystr(p) for p, x in flat
             if 'lora' not in jax.tree_util.keystr(p)
             and not np.array_equal(x, base_flat[jax.tree_util.keystr(p)])]
  assert changed == []  # the base weights are frozen
  assert any(np.any(x) for p, x in flat if 'lora_b' in jax.tree_util.keystr(p))

  # The adapters folded in and written as a run (what lm.lora_merge does) score the same,
  # restored by the Trainer as a params-only checkpoint.
  merged_cfg = ConfigDict(tuned.config.to_dict())
  merged_cfg.lora.rank = 0
  merged = lora.merge_params(jax.device_get(tuned.params), c.lora.alpha / c.lora.rank)
  write_run(tmp_path / 'merged', merged_cfg, merged, tuned.tokenizer, step=10)
  c.lora.rank = 0
  trainer = Trainer(c, str(tmp_path / 'merged'), log=lambda _: None)
  try:
    state, _ = trainer._initial_state()
  finally:
    trainer.checkpoints.close()
  assert trainer.evaluate(state['params'])['eval/loss'] == pytest.approx(final['eval/loss'],
                                                                          abs=1e-4)


def test_classification_pools_the_last_real_token_of_a_causal_model():
  """Causal pooling reads each row's last real token: padding after it changes nothing,
  the last token itself changes the logits (classification is trained end to end in
  tests/unit/model/test_encoder.py)."""
  model_def = ModelDef.create(ModelConfig(vocab_size=259, num_layers=1, width=32, num_heads=2,
                                          num_kv_heads=2, mlp_dim=64, max_len=8, num_classes=3))
  params = jax.jit(model_def.init_params)(jax.random.key(0))
  rows, _ = supervised.classify_rows(ByteTokenizer(), ['abc', 'hello'], 8)
  batch = supervised.classify_batch(rows, np.array([0, 2]))
  np.testing.assert_array_equal(batch['lengths'], [5, 7])

  @jax.jit
  def logits(tokens):
    return model_def.merge(params).classify(tokens, batch['positions'], batch['segment_ids'],
                                            batch['lengths'])
  base = np.asarray(logits(rows))
  padded = rows.copy()
  padded[0, 6] = 99  # a padding position of row 0
  np.testing.assert_array_equal(np.asarray(logits(padded)), base)
  last = rows.copy()
  last[0, 4] = 99  # row 0's last real token
  assert not np.allclose(np.asarray(logits(last))[0], base[0])
  np.testing.assert_array_equal(np.asarray(logits(last))[1], base[1])


def test_config_names_the_fine_tuning_keys_that_disagree():
  from lm import config as config_lib
  c = get_config()
  c.train.task, c.model.causal = 'mlm', True
  c.train.mlm_rate = 0.0
  c.lora.rank, c.lora.targets = 4, ('qkv', 'attn')
  c.init_from_opt_state = True
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, num_devices=8)
  text = str(e.value)
  for needle in ('train.mlm_rate=0.0', "set --config.model.causal=False",
                 "lora.targets has unknown projections ['attn']",
                 'init_from_opt_state=True needs init_from'):
    assert needle in text, text
  c = get_config()
  c.train.task = 'classify'
  with pytest.raises(config_lib.ConfigError, match=r"data.format=classify[\s\S]*num_classes"):
    config_lib.validate(c, num_devices=8)
