"""lm.bench_decode: the bytes a decode step reads, and one tiny run's report (no timings
are asserted: speed belongs in docs/benchmarks.md)."""

import dataclasses

import jax

from configs.default import get_config
from lm.infer.bench import bytes_read_per_step, run_benchmark
from lm.model import ModelConfig, ModelDef

CFG = ModelConfig(vocab_size=100, num_layers=2, width=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=64, max_len=32)


def test_bytes_read_per_step_counts_the_multiplied_weights_and_the_whole_cache():
  def shapes(cfg):  # the byte count needs only shapes and dtypes
    model_def = ModelDef.create(cfg)
    return model_def, jax.eval_shape(model_def.init_params, jax.random.key(0))

  md, params = shapes(CFG)
  n = CFG.param_count()
  # float32: everything but the untied embedding table, of which 3 looked-up rows are read
  got = bytes_read_per_step(md, params, batch=3, cache_len=20)
  assert got['weights'] == 4 * (n - 100 * 32 + 3 * 32)
  assert got['kv_cache'] == 2 * 2 * 3 * 20 * 2 * 8 * 4  # k and v, [L, B, S, K, H] float32
  assert got['total'] == got['weights'] + got['kv_cache']

  tied = dataclasses.replace(CFG, tie_embeddings=True)
  got = bytes_read_per_step(*shapes(tied), batch=3, cache_len=20)
  assert got['weights'] == 4 * tied.param_count()  # the table is the output matrix too

  got = bytes_read_per_step(*shapes(dataclasses.replace(CFG, weight_quant='int8')), batch=1,
                            cache_len=20)
  assert got['weights'] < 0.3 * 4 * (n - 100 * 32)


def test_a_tiny_run_reports_every_figure_per_batch_size():
  c = get_config()
  c.data.tokenizer.kind = 'byte'  # 259 ids, no tokenizer to train
  c.model.num_layers, c.model.width, c.model.mlp_dim = 1, 32, 64
  c.model.num_heads, c.model.num_kv_heads = 2, 1
  r = run_benchmark(c, batch_sizes=[2], prompt_len=4, new_tokens=3, naive_tokens=2,
                    repeats=1, quantize='int8', mem_bw_gbs=100.0)
  assert [row['batch'] for row in r['rows']] == [2] and r['quantize'] == 'int8'
  for row in r['rows']:
    for key in ('ttft_ms', 'kv_tokens_per_sec', 'naive_tokens_per_sec', 'kv_speedup',
                'bytes_per_token', 'achieved_gbs', 'bandwidth_fraction'):
      assert row[key] > 0, key
    assert row['bytes_per_token'] == row['bytes_per_step']['total'] / row['batch']
