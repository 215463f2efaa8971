"""Attention benchmarks (`python -m lm bench_attention`, lm/cli/bench_attention.py).

`op_table`: one attention layer's forward + backward (jit'd, float32 on CPU) per
implementation and length: median step time and the compiled temporary memory (XLA's
memory analysis). `gpu_suite`: the train-step MFU (lm.tools.bench) of the GPT-2-124M and
LLaMA-1B presets in bfloat16 per attention implementation, and KV-cache decode tokens/s at
batch 1 with the fraction of the memory-bandwidth bound (lm.infer.bench). An
implementation the machine cannot run is reported with its error, not skipped silently.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import gpt2_124m, llama_1b
from lm.errors import UserError
from lm.infer import bench as decode_bench
from lm.model.attention_kernels import attend
from lm.model.attention_mask import attention_mask
from lm.tools import bench as train_bench

GPU_IMPLS = ('xla', 'blockwise', 'cudnn', 'flash')


def op_table(lengths, impls, *, heads: int = 8, kv_heads: int = 4, head_dim: int = 64,
             repeats: int = 3, dtype: str = 'float32') -> list[dict]:
  """One row per (implementation, T): batch 1, two packed documents per row."""
  rows = []
  for t in lengths:
    rng = np.random.default_rng(0)
    q, w = (jnp.asarray(rng.normal(size=(1, t, heads, head_dim)), dtype) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(1, t, kv_heads, head_dim)), dtype) for _ in range(2))
    mask = attention_mask(jnp.asarray(np.repeat([[1, 2]], t // 2 + 1, axis=1)[:, :t]))
    for impl in impls:
      def loss(q, k, v, impl=impl, mask=mask, w=w):
        return jnp.sum(attend(impl, q, k, v, mask).astype(jnp.float32) * w)
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      compiled = step.lower(q, k, v).compile()
      temp = int(getattr(compiled.memory_analysis(), 'temp_size_in_bytes', 0) or 0)
      jax.block_until_ready(compiled(q, k, v))
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - t0)
      rows.append({'impl': impl, 'seq_len': t, 'step_ms': statistics.median(times) * 1e3,
                   'temp_mib': temp / 2**20})
  return rows


def _preset(module, *, impl: str, tiny: bool, seq_len: int, batch: int):
  c = module.get_config()
  c.model.attention = impl
  c.model.dtype = 'bfloat16'
  c.data.seq_len = seq_len
  c.train.batch_size = batch
  c.train.grad_accum = 1
  c.train.steps_per_dispatch = 1
  # Synthetic tokens: the table size only (no tokenizer is trained or read).
  c.model.vocab_size = c.model.vocab_size or -(-c.data.tokenizer.vocab_size // 64) * 64
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  if tiny:  # the CPU check of this script: same code path, toy sizes
    c.data.tokenizer.kind = 'byte'
    c.model.update(num_layers=1, width=64, num_heads=4, num_kv_heads=2, mlp_dim=128,
                   vocab_size=512)
    c.model.max_len = max(c.model.max_len, seq_len)
  return c


def gpu_suite(*, tiny: bool = False, mem_bw_gbs: float = 4800.0, log=print) -> dict:
  """MFU per preset x implementation and batch-1 decode; `tiny`: toy shapes (CPU check)."""
  seq_len, batch = (64, 2) if tiny else (1024, 8)
  dispatches, warmup = (2, 1) if tiny else (5, 2)
  train = []
  for name, module in (('gpt2_124m', gpt2_124m), ('llama_1b', llama_1b)):
    for impl in GPU_IMPLS:
      cfg = _preset(module, impl=impl, tiny=tiny, seq_len=seq_len, batch=batch)
      row = {'model': name, 'impl': impl}
      try:
        r = train_bench.run_benchmark(cfg, dispatches=dispatches, warmup=warmup,
                                      peak_n=512 if tiny else 8192)
        row.update(step_ms=r['step_ms_median'], tokens_per_sec=r['tokens_per_sec'],
                   mfu=r['mfu'], device=r['device'])
      except (UserError, NotImplementedError, ValueError, RuntimeError) as e:
        row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}'
      log(row)
      train.append(row)
  decode = []
  for name, module in (('gpt2_124m', gpt2_124m), ('llama_1b', llama_1b)):
    cfg = _preset(module, impl='auto', tiny=tiny, seq_len=seq_len, batch=1)
    r = decode_bench.run_benchmark(cfg, batch_sizes=[1], prompt_len=16 if tiny else 128,
                                   new_tokens=16 if tiny else 256, naive_tokens=0,
                                   repeats=1 if tiny else 3, mem_bw_gbs=mem_bw_gbs)
    row = {'model': name, **r['rows'][0]} if 'rows' in r else {'model': name, **r}
    log(row)
    decode.append(row)
  return {'train': train, 'decode': decode}
