"""The attention implementations behind `model.attention`, and what 'auto' picks.

- 'xla': jax.nn.dot_product_attention(implementation='xla') under the dense [B, 1, T, S]
  mask; it materializes [B, N, T, S] float32 scores (and keeps the probabilities for the
  backward pass). Fastest on CPU for short rows.
- 'blockwise': lm.model.attention_blockwise, plain JAX, O(T) memory, any backend.
- 'cudnn': jax.nn.dot_product_attention(implementation='cudnn', is_causal=...): cuDNN's
  fused flash kernel on NVIDIA GPUs (bfloat16, head dim a multiple of 8 and <= 256). The
  public jax API takes no segment ids, so the packed-document mask goes in as a [B, 1, T, T]
  boolean (turned into an additive bias, per row and not per head); causality takes the
  kernel's causal path. Scores are never materialized.
- 'flash': the Pallas (Triton) flash-attention kernel of jax.experimental.pallas.ops.gpu
  with segment ids (no dense mask at all), on GPUs.
- 'splash': the Pallas TPU splash-attention kernel of jax.experimental.pallas.ops.tpu with
  segment ids (no dense mask) and a causal or full static mask, on TPUs; grouped KV heads
  go to the MHA kernel as they are (it maps query head n to KV head n // groups), one KV
  head to the MQA kernel.

Each Pallas kernel is one custom call per layer, which XLA's SPMD partitioner cannot split
(it would gather Q/K/V onto every device and run the whole kernel everywhere). So under
sharding rules (lm.parallel.use_rules) both run per device under shard_map (`per_device`):
the rows split as the 'batch' rule says, the heads as 'act_heads' and 'act_kv_heads' say
when both rules give the same mesh axes and those divide N and K alike (query head n then
stays with its KV head n // groups on one device; otherwise the heads stay whole), and the
segment ids split with the rows. The sequence stays whole: where 'seq' splits the tokens
(context parallelism), XLA gathers each row's Q/K/V over the sequence group on the way in
and the group's devices run the same rows; batch and heads still split. A device cannot
take only its own queries: flash's causal mask counts queries and keys from the same first
token, and splash's static mask is built once on the host for all devices. (Context
parallelism has no ring attention; 'xla' and 'blockwise' leave the K/V gather to XLA and
compute only each device's own queries, see docs/scaling.md.) Without rules the kernels
run as they are.

A KV-cache decode (queries at positions over cache slots) is a layout the fused kernels
do not take: it runs 'blockwise' where that was chosen, else 'xla', or 'blockwise' when the
dense scores would be large (see `choose`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from lm.errors import ConfigError
from lm.model.attention_blockwise import blockwise_attention
from lm.model.attention_mask import AttentionMask
from lm.parallel.rules import active_rules, logical_to_spec

IMPLEMENTATIONS = ('auto', 'xla', 'blockwise', 'cudnn', 'flash', 'splash')
NEEDS_PLATFORM = {'cudnn': 'gpu', 'flash': 'gpu', 'splash': 'tpu'}
FUSED = ('cudnn', 'flash', 'splash')
# 'auto' keeps the dense XLA path while one row's float32 scores over all heads stay below
# this (and T <= DENSE_MAX_LEN). A heuristic, not a measured crossover: on the loaded CPU
# of docs/benchmarks.md ("Attention implementations") the two were level at T=128 and
# blockwise was already faster at 1024.
DENSE_MAX_SCORE_BYTES = 64 * 2**20
DENSE_MAX_LEN = 2048


def choose(cfg, platform: str, *, q_len, kv_len, self_attention: bool = True
           ) -> tuple[str, str]:
  """(implementation, why) for `cfg.attention` on `platform` ('cpu' | 'gpu' | 'tpu') and
  these lengths. An explicit choice the platform or the model cannot run is a ConfigError
  naming model.attention (raised while tracing, before anything compiles).

  A length may be symbolic (jax.export's shape polymorphism, e.g. any prompt length): its
  size is then unknown and 'auto' takes the dense XLA path, the one that traces for any
  length (as the exported decode always did); an explicit choice is kept."""
  want = cfg.attention
  if want not in IMPLEMENTATIONS:
    raise ConfigError(f'model.attention={want!r} is not one of {", ".join(IMPLEMENTATIONS)}.')
  need = NEEDS_PLATFORM.get(want)
  if need and platform != need:
    raise ConfigError(
        f"model.attention={want!r} runs on {need.upper()}s only, but this is {platform}; use "
        "model.attention='auto' (blockwise or dense XLA here) or 'blockwise'.")
  if want in FUSED:
    problem = kernel_problem(want, cfg)
    if problem:
      raise ConfigError(problem)
  if not (is_concrete_length(q_len) and is_concrete_length(kv_len)):
    fallback = ('xla', 'symbolic lengths (jax.export): dense XLA, which traces for any length')
  else:
    score_bytes = cfg.num_heads * q_len * kv_len * 4
    dense_ok = score_bytes <= DENSE_MAX_SCORE_BYTES and q_len <= DENSE_MAX_LEN
    fallback = (('xla', f'dense scores {score_bytes / 2**20:.1f} MiB per row are small')
                if dense_ok else
                ('blockwise', f'dense scores would be {score_bytes / 2**20:.1f} MiB per row'))
  if want in ('xla', 'blockwise'):
    return want, 'model.attention'
  if want in FUSED:
    if not self_attention:
      return fallback[0], f'{want} takes no KV-cache decode layout; {fallback[1]}'
    return want, 'model.attention'
  # auto
  if platform == 'gpu' and self_attention and not kernel_problem('cudnn', cfg):
    return 'cudnn', 'auto on GPU: cuDNN fused attention (bfloat16, head dim fits)'
  if platform == 'tpu' and self_attention and not kernel_problem('splash', cfg):
    return 'splash', 'auto on TPU: splash attention with segment ids'
  return fallback[0], f'auto on {platform}: {fallback[1]}'


def is_concrete_length(n) -> bool:
  """A concrete length (not a jax.export symbolic dimension)."""
  return isinstance(n, (int, np.integer))


def kernel_problem(impl: str, cfg) -> str | None:
  """Why the fused kernel `impl` ('cudnn' | 'flash' | 'splash') cannot take this model, naming the
  config keys (None when it can). cuDNN flash attention (jax/_src/cudnn/
  fused_attention_stablehlo.py, jax 0.10): 16-bit inputs, head dim a multiple of 8 and
  <= 256 on Hopper and later (<= 128 before, which jax names itself). The Pallas GPU kernel
  (jax.experimental.pallas.ops.gpu.attention): head dim 16..256. Splash (jax.experimental.
  pallas.ops.tpu.splash_attention, jax 0.10.2) checks only its blocks (multiples of 128,
  which splash_attention pads T to) and no head dim, so it has no problem to report here.
  lm/config/sections/model.py reports the same problems when a config file is checked."""
  hd = cfg.head_dim
  if impl == 'cudnn':
    if cfg.dtype != 'bfloat16':
      return (f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention "
              f'takes 16-bit inputs), but model.dtype={cfg.dtype!r}; set model.dtype=bfloat16 '
              "or use model.attention='auto'.")
    if hd % 8 or hd > 256:
      return (f"model.attention='cudnn' needs a head dimension that is a multiple of 8 and "
              f'<= 256, but it is {hd}; change model.width, model.num_heads or model.head_dim, '
              "or use model.attention='auto'.")
  if impl == 'flash' and not 16 <= hd <= 256:
    return (f"model.attention='flash' needs a head dimension between 16 and 256, but it is "
            f'{hd}; change model.width, model.num_heads or model.head_dim, or use '
            "model.attention='auto'.")
  return None


def attend(impl: str, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask) -> jax.Array:
  """o [B, T, N, H] of implementation `impl` (a name `choose` returned)."""
  if impl == 'xla':
    return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask.dense(),
                                        implementation='xla')
  if impl == 'blockwise':
    return blockwise_attention(q_BTNH, k_BSKH, v_BSKH, mask)
  if impl == 'cudnn':
    return cudnn_attention(q_BTNH, k_BSKH, v_BSKH, mask)
  if impl == 'flash':
    return flash_attention(q_BTNH, k_BSKH, v_BSKH, mask)
  if impl == 'splash':
    return splash_attention(q_BTNH, k_BSKH, v_BSKH, mask)
  raise ValueError(f'unknown attention implementation {impl!r}')


def cudnn_attention(q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask) -> jax.Array:
  """cuDNN through jax: the causal structure as is_causal, the segments as a mask."""
  seg_B1TT = (mask.q_segments[:, :, None] == mask.kv_segments[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=seg_B1TT,
                                      is_causal=mask.causal, implementation='cudnn')


def _padded_segments(mask: AttentionMask, multiple: int) -> tuple[int, jax.Array]:
  """(T rounded up to `multiple`, the query segment ids [B, T'] padded with an id no real
  token has): what the Pallas kernels take, so padded tokens see only each other."""
  t = mask.q_segments.shape[1]
  tp = -(-t // multiple) * multiple
  return tp, jnp.pad(mask.q_segments, ((0, 0), (0, tp - t)), constant_values=-2**31)


def kernel_spec(q_BTNH, k_BTKH) -> PartitionSpec | None:
  """The spec of q, k, v and o [B, T, heads, H] that `per_device` runs a kernel under, or
  None without active sharding rules. The rows split as 'batch' says; the heads as
  'act_heads' and 'act_kv_heads' say only when both give the same mesh axes (which then
  divide N and K alike, so every device holds whole KV groups), else not at all; T and H
  stay whole."""
  active = active_rules()
  if active is None:
    return None
  mesh, rules = active
  q_spec = logical_to_spec(('batch', None, 'act_heads', None), rules, mesh, q_BTNH.shape)
  kv_spec = logical_to_spec(('batch', None, 'act_kv_heads', None), rules, mesh, k_BTKH.shape)
  heads = q_spec[2] if q_spec[2] == kv_spec[2] else None
  return PartitionSpec(q_spec[0], None, heads, None)


def per_device(kernel, q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask) -> jax.Array:
  """kernel(q, k, v, mask) -> o [B, T, N, H], under active sharding rules run by shard_map
  on each device's rows and heads (`kernel_spec`; the mask's ids [B, T] split with the
  rows), else as it is."""
  spec = kernel_spec(q_BTNH, k_BTKH)
  if spec is None:
    return kernel(q_BTNH, k_BTKH, v_BTKH, mask)
  mesh, _ = active_rules()
  rows_spec = PartitionSpec(spec[0], None)
  # check_vma=False: the Pallas kernels (their interpreter's pads, their output shapes)
  # carry no varying-manual-axes types, which check_vma=True refuses (jax 0.10.2).
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, rows_spec),
                       out_specs=spec, check_vma=False)(q_BTNH, k_BTKH, v_BTKH, mask)


def flash_attention(q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask, *, interpret: bool = False
                    ) -> jax.Array:
  """The Pallas GPU flash kernel with segment ids, per device under sharding rules
  (`per_device`; `interpret`: run it in Pallas's interpreter, on any backend, as the tests
  do). T is padded to a multiple of 16 with a segment id no real token has; K/V heads are
  repeated to the query heads (the kernel has no grouped heads)."""
  return per_device(functools.partial(_flash, interpret=interpret), q_BTNH, k_BTKH, v_BTKH,
                    mask)


def _flash(q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask, *, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.gpu import attention as pallas_gpu  # GPU kernels: heavy

  b, t, n, h = q_BTNH.shape
  groups = n // k_BTKH.shape[2]
  k_BTNH = jnp.repeat(k_BTKH, groups, axis=2)
  v_BTNH = jnp.repeat(v_BTKH, groups, axis=2)
  tp, seg_BT = _padded_segments(mask, 16)
  pad = ((0, 0), (0, tp - t), (0, 0), (0, 0))
  block = next(s for s in (128, 64, 32, 16) if tp % s == 0)
  bwd = min(32, block)
  sizes = pallas_gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=bwd,
                                block_kv_dkv=bwd, block_q_dq=bwd, block_kv_dq=bwd)
  o = pallas_gpu.mha(jnp.pad(q_BTNH, pad), jnp.pad(k_BTNH, pad), jnp.pad(v_BTNH, pad), seg_BT,
                     sm_scale=h ** -0.5, causal=mask.causal, block_sizes=sizes,
                     interpret=interpret)
  return o[:, :t]


def splash_attention(q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask, *, interpret: bool = False
                     ) -> jax.Array:
  """The Pallas TPU splash kernel with segment ids, vmapped over the batch, per device under
  sharding rules (`per_device`; `interpret`: Pallas's interpreter, on any backend, as the
  tests do). The kernel takes no scale: q is multiplied by 1/sqrt(H) first. T is padded to
  a multiple of 128 (its kv compute block is a whole number of 128-lane tiles) with a
  segment id no real token has, so padded queries see only padding and real ones never see
  it. Grouped KV heads (1 < K < N, on the device) go to the MHA kernel unrepeated; K = 1 to
  the MQA kernel."""
  return per_device(functools.partial(_splash, interpret=interpret), q_BTNH, k_BTKH, v_BTKH,
                    mask)


def _splash(q_BTNH, k_BTKH, v_BTKH, mask: AttentionMask, *, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # TPU kernels: heavy

  b, t, n, h = q_BTNH.shape
  kv = k_BTKH.shape[2]
  tp, seg_BT = _padded_segments(mask, 128)
  block = next(s for s in (512, 256, 128) if tp % s == 0)
  static = splash.CausalMask((tp, tp)) if mask.causal else splash.FullMask((tp, tp))
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  make = splash.make_splash_mqa if kv == 1 else splash.make_splash_mha
  kernel = make(splash.MultiHeadMask([static] * n), block_sizes=sizes, head_shards=1,
                q_seq_shards=1, interpret=interpret)
  pad = ((0, 0), (0, 0), (0, tp - t), (0, 0))
  q_BNTH = jnp.pad(jnp.swapaxes(q_BTNH * h ** -0.5, 1, 2), pad)
  k_BKTH = jnp.pad(jnp.swapaxes(k_BTKH, 1, 2), pad)
  v_BKTH = jnp.pad(jnp.swapaxes(v_BTKH, 1, 2), pad)
  if kv == 1:
    k_BKTH, v_BKTH = k_BKTH[:, 0], v_BKTH[:, 0]

  def row(q, k, v, seg):
    return kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))

  o_BNTH = jax.vmap(row)(q_BNTH, k_BKTH, v_BKTH, seg_BT)
  return jnp.swapaxes(o_BNTH[:, :, :t], 1, 2)


def score_bytes_kept(impl: str, *, rows: int, heads: int, q_len: int, kv_len: int,
                     block: int = 512) -> int:
  """Bytes of attention scores/probabilities one layer keeps for the backward pass (and the
  peak of its working tiles) for `rows` rows: what lm.plan counts per implementation."""
  if impl == 'xla':  # float32 probabilities [B, N, T, S], kept
    return rows * heads * q_len * kv_len * 4
  if impl == 'blockwise':  # log-sum-exp [B, N, T] kept, plus a few score tiles in flight
    tile = rows * heads * min(block, q_len) * min(block, kv_len) * 4
    return rows * heads * q_len * 4 + 3 * tile
  if impl == 'cudnn':  # softmax statistics [B, N, T] + the [B, 1, T, S] segment bias
    return rows * heads * q_len * 4 + rows * q_len * kv_len * 2
  if impl == 'flash':  # log-sum-exp [B, N, T]
    return rows * heads * q_len * 4
  if impl == 'splash':  # log-sum-exp [B, N, T] (T padded to 128) + the [B, T] segment ids
    return rows * heads * (-(-q_len // 128) * 128) * 4 + rows * (q_len + kv_len) * 4
  raise ValueError(f'unknown attention implementation {impl!r}')
