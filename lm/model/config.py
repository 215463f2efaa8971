"""ModelConfig: the typed, frozen view of `config.model` that the modules read."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """The mixture-of-experts feed-forward block (`config.model.moe`; lm/model/moe.py)."""

  num_experts: int = 0  # 0: dense MLP everywhere
  top_k: int = 1
  expert_mlp_dim: int = 0  # 0: the model's mlp_dim
  capacity_factor: float = 1.25  # 0: dropless
  shared_expert: bool = False
  aux_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  every: int = 1  # one MoE layer per group of `every` layers (the group's last)
  routing: str = 'learned'  # 'learned' | 'domain' | 'domain+learned'
  num_domains: int = 0
  impl: str = 'grouped'  # 'grouped' (expert-sorted grouped matmul) | 'dispatch' (one-hot)

  @property
  def enabled(self) -> bool:
    return self.num_experts > 0

  @property
  def experts_per_token(self) -> int:
    """Experts each token is computed by: top_k, or all of its domain's in 'domain' mode."""
    if self.routing == 'domain':
      return self.num_experts // max(self.num_domains, 1)
    return self.top_k


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of one decoder Transformer (GPT-2 or LLaMA style)."""

  vocab_size: int
  num_layers: int = 4
  width: int = 256
  num_heads: int = 4
  num_kv_heads: int = 4
  # 0: width // num_heads (resolved in __post_init__, so cfg.head_dim is always the size)
  head_dim: int = 0
  mlp_dim: int = 768
  max_len: int = 256
  norm: str = 'rmsnorm'  # 'rmsnorm' | 'layernorm'
  norm_eps: float = 1e-5
  mlp: str = 'swiglu'  # 'swiglu' | 'gelu'
  position: str = 'rope'  # 'rope' | 'learned'
  rope_theta: float = 10_000.0
  use_bias: bool = False
  tie_embeddings: bool = False
  dropout: float = 0.0
  init_std: float = 0.02
  param_dtype: str = 'float32'
  dtype: str = 'float32'
  remat: str = 'none'  # 'none' | 'full' | 'dots'
  unroll_layers: bool = False  # scan over the stacked layers unrolled (faster on CPU)
  attention: str = 'auto'  # 'auto' | 'xla' | 'blockwise' | 'cudnn' | 'flash' | 'splash'
  moe: MoEConfig = MoEConfig()
  # Inference only (lm.model.quantize): 'int8' stores matmul weights as int8 with a float32
  # scale per output channel, dequantized inside the matmul. Never set by a training config.
  weight_quant: str = 'none'  # 'none' | 'int8'
  causal: bool = True  # False: bidirectional encoder (BERT-style)
  num_classes: int = 0  # > 0: a classification head (lm/model/heads.py)
  # LoRA adapters (lm/model/lora.py), filled from `config.lora` by `with_lora`
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.head_dim:
      object.__setattr__(self, 'head_dim', self.width // self.num_heads)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def quantized(self) -> bool:
    return self.weight_quant != 'none'

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, *, vocab_size: int | None = None,
                  seq_len: int | None = None) -> ModelConfig:
    """Builds from `config.model`; 0-valued vocab_size/max_len come from the data."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in model.to_dict().items() if k in fields}
    if not values.get('vocab_size'):
      if vocab_size is None:
        raise ValueError('model.vocab_size is 0 and no tokenizer vocabulary size was given')
      values['vocab_size'] = vocab_size
    if not values.get('max_len'):
      values['max_len'] = seq_len or 0
    if isinstance(values.get('moe'), dict):
      values['moe'] = MoEConfig(**values['moe'])
    return cls(**values)

  def param_count(self) -> int:
    """Number of parameters, computed from the shapes (no arrays are built)."""
    d, h, k, dh, f, v = (self.width, self.num_heads, self.num_kv_heads, self.head_dim,
                         self.mlp_dim, self.vocab_size)
    bias = self.use_bias
    attn = d * h * dh + 2 * d * k * dh + h * dh * d + (bias and (h * dh + 2 * k * dh + d))
    mlp_in = 2 if self.mlp == 'swiglu' else 1
    mlp = mlp_in * d * f + f * d + (bias and (mlp_in * f + d))
    norm = d * (2 if self.norm == 'layernorm' else 1)
    block = attn + mlp + 2 * norm
    embed = v * d + (0 if self.tie_embeddings else d * v + (bias and v))
    pos = self.max_len * d if self.position == 'learned' else 0
    head = self.num_classes * (self.width + 1)
    return (self.num_layers * (block + self.lora_params_per_layer()) + embed + pos + norm + head
            + self._moe_extra_params(active=False))

  def lora_params_per_layer(self) -> int:
    """Adapter parameters of one block: r * (in + out) per adapted projection."""
    d, h, k, dh, f = self.width, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    dims = {'qkv': (d, h * dh + 2 * k * dh), 'out': (h * dh, d),
            'mlp_in': (d, f * (2 if self.mlp == 'swiglu' else 1)), 'mlp_out': (f, d)}
    return sum(self.lora_rank * sum(dims[t]) for t in self.lora_targets) if self.lora_rank else 0

  def with_lora(self, lora: ml_collections.ConfigDict) -> ModelConfig:
    """This config with the adapters `config.lora` describes (rank 0: none)."""
    return dataclasses.replace(self, lora_rank=lora.rank, lora_alpha=float(lora.alpha),
                               lora_dropout=float(lora.dropout),
                               lora_targets=tuple(lora.targets) if lora.rank else ())

  def _moe_extra_params(self, *, active: bool) -> int:
    """Parameters MoE layers add over dense ones (all experts, or those a token uses)."""
    moe = self.moe
    if not moe.enabled:
      return 0
    d, f = self.width, moe.expert_mlp_dim or self.mlp_dim
    mlp_in = 2 if self.mlp == 'swiglu' else 1
    expert = mlp_in * d * f + f * d + (self.use_bias and (mlp_in * f + d))
    dense = mlp_in * d * self.mlp_dim + self.mlp_dim * d + (
        self.use_bias and (mlp_in * self.mlp_dim + d))
    router = 0 if moe.routing == 'domain' else d * moe.num_experts
    n = moe.experts_per_token if active else moe.num_experts
    per_layer = n * expert + router + (dense if moe.shared_expert else 0) - dense
    return (self.num_layers // moe.every) * per_layer

  def active_param_count(self) -> int:
    """Parameters one token's forward pass uses (= param_count for a dense model)."""
    return (self.param_count() - self._moe_extra_params(active=False)
            + self._moe_extra_params(active=True))

  def flops_per_token(self, seq_len: int) -> int:
    """Training FLOPs per token: 6 x matmul parameters + attention (PaLM appendix B)."""
    matmul_params = self.active_param_count() - self.vocab_size * self.width * (
        1 if not self.tie_embeddings else 0)
    if self.position == 'learned':
      matmul_params -= self.max_len * self.width
    attn = 12 * self.num_layers * self.num_heads * self.head_dim * seq_len // 2
    return 6 * matmul_params + attn
