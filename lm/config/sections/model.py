"""The model section and its MoE subsection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from lm.config.fields import Section, in_range, non_negative, positive
from lm.config.sections.base import frozen


@frozen
class MoE(Section):
  num_experts: int = non_negative()
  top_k: int
  expert_mlp_dim: int = non_negative()
  capacity_factor: float = non_negative()
  shared_expert: bool
  aux_loss_weight: float = non_negative()
  z_loss_weight: float = non_negative()
  every: int
  routing: Literal['learned', 'domain', 'domain+learned']
  num_domains: int = non_negative()
  impl: Literal['grouped', 'dispatch']

  def problems(self) -> Iterator[str]:
    e, d = self.num_experts, self.num_domains
    if self.top_k not in (1, 2):
      yield f'model.moe.top_k={self.top_k} must be 1 or 2 (experts each token is routed to).'
    if self.every < 1:
      yield (f'model.moe.every={self.every} must be >= 1 (1: every layer is MoE, 2: every '
             'other).')
    if not e:
      return
    if self.routing != 'domain' and self.top_k > e:
      yield f'model.moe.top_k={self.top_k} exceeds model.moe.num_experts={e}.'
    if self.routing == 'learned':
      return
    if d < 1:
      yield (f"model.moe.routing='{self.routing}' needs model.moe.num_domains >= 1 (the number "
             'of data.mixture entries).')
    elif e % d:
      yield (f'model.moe.num_experts={e} is not divisible by model.moe.num_domains={d}; each '
             'domain owns num_experts / num_domains experts.')
    elif self.routing == 'domain+learned' and e // d < self.top_k:
      yield (f'model.moe.top_k={self.top_k} exceeds the {e // d} experts each domain owns '
             f'(num_experts / num_domains = {e}/{d}); lower top_k or add experts.')


@frozen
class Model(Section):
  vocab_size: int = non_negative(' (0: the tokenizer size)')
  num_layers: int = positive()
  width: int = positive()
  num_heads: int = positive()
  num_kv_heads: int = positive()
  head_dim: int = non_negative(' (0: width / num_heads)')
  mlp_dim: int = positive()
  max_len: int = non_negative(' (0: data.seq_len)')
  norm: Literal['rmsnorm', 'layernorm']
  norm_eps: float = positive()
  mlp: Literal['swiglu', 'gelu']
  position: Literal['rope', 'learned']
  rope_theta: float = positive()
  use_bias: bool
  tie_embeddings: bool
  dropout: float = in_range(0.0, 1.0, lo_inclusive=True)
  init_std: float = positive()
  param_dtype: Literal['float32', 'bfloat16']
  dtype: Literal['float32', 'bfloat16']
  remat: Literal['none', 'full', 'dots']
  unroll_layers: bool
  attention: Literal['auto', 'xla', 'blockwise', 'cudnn', 'flash', 'splash']
  moe: MoE
  causal: bool
  num_classes: int = non_negative()

  def problems(self) -> Iterator[str]:
    w, h = self.width, self.num_heads
    if not self.head_dim and w % h:
      yield (f'model.width={w} is not divisible by model.num_heads={h}; change one so that '
             'width / num_heads is the head dimension (or set model.head_dim).')
    elif self.position == 'rope' and self.resolved_head_dim % 2:
      yield (f'model.position=rope needs an even head dimension, but it is '
             f'{self._head_dim_expr()}; change model.width, model.num_heads or model.head_dim.')
    if h % self.num_kv_heads:
      yield (f'model.num_heads={h} is not divisible by model.num_kv_heads={self.num_kv_heads}; '
             'each key/value head must serve a whole group of query heads.')
    if self.moe.num_experts and self.moe.every >= 1 and self.num_layers % self.moe.every:
      yield (f'model.num_layers={self.num_layers} is not divisible by model.moe.every='
             f'{self.moe.every}; layers are scanned in groups of `every` (one MoE layer per '
             'group).')
    if self.attention == 'cudnn':
      yield from self._cudnn_problems()
    # 'splash' (the Pallas TPU kernel) pads T to its 128-multiple blocks itself and checks no
    # head dim (jax 0.10.2): nothing to report for it.
    if (self.attention == 'flash' and (self.head_dim or not w % h)
        and not 16 <= self.resolved_head_dim <= 256):
      # The Pallas GPU kernel (jax.experimental.pallas.ops.gpu.attention) pads the head dim
      # to a power of two; its Triton tiles need 16..256.
      yield (f"model.attention='flash' needs a head dimension between 16 and 256, but it is "
             f'{self._head_dim_expr()}; change model.width, model.num_heads or model.head_dim, '
             "or use model.attention='auto'.")

  def _cudnn_problems(self) -> Iterator[str]:
    # cuDNN flash attention (jax/_src/cudnn/fused_attention_stablehlo.py, jax 0.10:
    # check_is_flash_attention and _dot_product_attention_fwd) takes fp16/bf16/fp8 inputs
    # only, and for fp16/bf16 a head dim that is a multiple of 8 and <= 128, or <= 256 on
    # Hopper (sm90) and later. The config cannot know the GPU: 256 is checked here, and
    # jax names the 128 limit on older GPUs.
    if self.dtype != 'bfloat16':
      yield (f"model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention "
             f"takes 16-bit inputs), but model.dtype={self.dtype!r}; set "
             "--config.model.dtype=bfloat16, or model.attention='auto' (blockwise or dense XLA "
             'in float32).')
    if self.head_dim or self.width % self.num_heads == 0:
      hd = self.resolved_head_dim
      if hd % 8 or hd > 256:
        yield (f"model.attention='cudnn' needs a head dimension that is a multiple of 8 and "
               f'<= 256 (<= 128 before Hopper GPUs), but it is {self._head_dim_expr()}; change '
               "model.width, model.num_heads or model.head_dim, or use model.attention='auto'.")

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.width // self.num_heads

  def _head_dim_expr(self) -> str:
    if self.head_dim:
      return f'model.head_dim={self.head_dim}'
    return f'model.width/model.num_heads = {self.width}/{self.num_heads} = {self.resolved_head_dim}'
