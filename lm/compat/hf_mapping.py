"""Hugging Face GPT-2 and LLaMA checkpoints <-> ModelConfig and our parameter tree.

Config: `config_from_hf` / `config_to_hf` (kept out of lm.model, which knows nothing of HF).
Weights: one function per family and direction between HF's flat {name: array} dict and
our nested params (layers stacked on a leading axis), in numpy only (no torch). HF stores
a Linear weight as [out, in] (GPT-2's Conv1D as [in, out]); our QKV kernel is fused per KV
group as [D, K, G + 2, H] and SwiGLU's gate/up as [D, F, 2]. Both sides use the same
rotate-half RoPE (lm/model/attention.py), so no q/k permutation is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lm.errors import ConversionError
from lm.model.config import ModelConfig

FAMILIES = ('gpt2', 'llama')
# The ModelConfig fields an HF config decides; the rest (dtype, remat, dropout, ...) are
# training choices that stay as the experiment config has them.
ARCHITECTURE_FIELDS = ('vocab_size', 'num_layers', 'width', 'num_heads', 'num_kv_heads',
                       'head_dim', 'mlp_dim', 'max_len', 'norm', 'norm_eps', 'mlp', 'position',
                       'rope_theta', 'use_bias', 'tie_embeddings')
# What each family needs of a ModelConfig (to_hf refuses a model that matches neither).
FAMILY_NEEDS = {
    'llama': {'norm': 'rmsnorm', 'mlp': 'swiglu', 'position': 'rope', 'use_bias': False},
    'gpt2': {'norm': 'layernorm', 'mlp': 'gelu', 'position': 'learned', 'use_bias': True,
             'tie_embeddings': True},
}
GPT2_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh')  # tanh-approximated GELU, as ours
# Buffers some checkpoints hold that are not parameters (masks, RoPE tables).
_IGNORED_SUFFIXES = ('.attn.bias', '.attn.masked_bias', '.rotary_emb.inv_freq')


HFConversionError = ConversionError  # the name this module's errors had before lm.errors


# ---- configs ------------------------------------------------------------------------------


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """The ModelConfig of an HF config.json dict; `overrides` sets non-architecture fields."""
  model_type = hf.get('model_type')
  if model_type not in FAMILIES:
    raise ConversionError(f'config.json model_type={model_type!r} is not supported; '
                          f'lm converts {", ".join(FAMILIES)} models.')
  fields = _gpt2_config_from_hf(hf) if model_type == 'gpt2' else _llama_config_from_hf(hf)
  bad = sorted(set(overrides) & set(ARCHITECTURE_FIELDS))
  if bad:
    raise ConversionError(f'{", ".join(bad)} come from config.json; they cannot be overridden.')
  return ModelConfig(**fields, **overrides)


def _get(hf: Mapping[str, Any], key: str, default: Any = None) -> Any:
  value = hf.get(key, default)
  if value is None:
    raise ConversionError(f'config.json has no {key!r}; it is needed to build the model.')
  return value


def _gpt2_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
  width = _get(hf, 'n_embd')
  act = hf.get('activation_function', 'gelu_new')
  problems = []
  if act not in GPT2_ACTIVATIONS:
    problems.append(f'activation_function={act!r} (lm has the tanh GELU: '
                    f'{" or ".join(GPT2_ACTIVATIONS)})')
  if not hf.get('scale_attn_weights', True):
    problems.append('scale_attn_weights=false (lm scales attention by 1/sqrt(head_dim))')
  if hf.get('scale_attn_by_inverse_layer_idx', False):
    problems.append('scale_attn_by_inverse_layer_idx=true')
  if hf.get('add_cross_attention', False):
    problems.append('add_cross_attention=true')
  if not hf.get('tie_word_embeddings', True):
    problems.append('tie_word_embeddings=false (lm\'s GPT-2 ties its LM head to the embedding)')
  if problems:
    raise ConversionError(f'config.json (gpt2) uses what lm does not implement: '
                          f'{"; ".join(problems)}.')
  return dict(vocab_size=_get(hf, 'vocab_size'), num_layers=_get(hf, 'n_layer'), width=width,
              num_heads=_get(hf, 'n_head'), num_kv_heads=_get(hf, 'n_head'),
              mlp_dim=hf.get('n_inner') or 4 * width, max_len=_get(hf, 'n_positions'),
              norm='layernorm', norm_eps=float(hf.get('layer_norm_epsilon', 1e-5)), mlp='gelu',
              position='learned', use_bias=True, tie_embeddings=True)


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """RoPE base from `rope_parameters` (transformers >= 5) or `rope_theta`/`rope_scaling`."""
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  kind = rope.get('rope_type', rope.get('type', 'default'))
  if kind != 'default':
    raise ConversionError(f'config.json RoPE type {kind!r} is not supported (lm implements '
                          "plain RoPE, rope_type 'default').")
  return float(rope.get('rope_theta', hf.get('rope_theta', 10_000.0)))


def _llama_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
  width, heads = _get(hf, 'hidden_size'), _get(hf, 'num_attention_heads')
  problems = []
  if hf.get('hidden_act', 'silu') != 'silu':
    problems.append(f'hidden_act={hf.get("hidden_act")!r} (lm\'s SwiGLU uses silu)')
  for key in ('attention_bias', 'mlp_bias'):
    if hf.get(key, False):
      problems.append(f'{key}=true (lm\'s LLaMA has no biases)')
  head_dim = hf.get('head_dim') or 0  # explicit (e.g. a pruned run's): kept as model.head_dim
  if width % heads and not head_dim:
    problems.append(f'hidden_size={width} not divisible by num_attention_heads={heads}')
  if head_dim == width // heads and not width % heads:
    head_dim = 0
  if problems:
    raise ConversionError(f'config.json (llama) uses what lm does not implement: '
                          f'{"; ".join(problems)}.')
  return dict(vocab_size=_get(hf, 'vocab_size'), num_layers=_get(hf, 'num_hidden_layers'),
              width=width, num_heads=heads, head_dim=head_dim,
              num_kv_heads=hf.get('num_key_value_heads') or heads,
              mlp_dim=_get(hf, 'intermediate_size'),
              max_len=_get(hf, 'max_position_embeddings', 2048), norm='rmsnorm',
              norm_eps=float(hf.get('rms_norm_eps', 1e-6)), mlp='swiglu', position='rope',
              rope_theta=_rope_theta(hf), use_bias=False,
              tie_embeddings=bool(hf.get('tie_word_embeddings', False)))


def family(cfg: ModelConfig) -> str:
  """The HF family `cfg` is expressible in ('gpt2' or 'llama'), else ConversionError."""
  misses = {}
  for name, needs in FAMILY_NEEDS.items():
    misses[name] = [f'model.{k}={v!r}' for k, v in needs.items() if getattr(cfg, k) != v]
  if cfg.num_kv_heads != cfg.num_heads:
    misses['gpt2'].append('model.num_kv_heads = model.num_heads')
  if cfg.head_dim * cfg.num_heads != cfg.width:  # (a pruned run's heads may not fill width)
    misses['gpt2'].append('model.head_dim = model.width / model.num_heads')
  # What neither family has: a run with these is refused whatever its other fields.
  neither = [msg for bad, msg in (
      (cfg.moe.enabled, 'a dense MLP (model.moe.num_experts=0)'),
      (cfg.lora_rank > 0, 'no LoRA adapters (fold them in first: python -m lm.lora_merge)'),
      (cfg.num_classes > 0, 'a language-model head (model.num_classes=0)'),
      (not cfg.causal, 'a causal decoder (model.causal=True)'),
      (cfg.quantized, 'float weights (not model.weight_quant)')) if bad]
  if neither:
    raise ConversionError('the model has no Hugging Face family lm exports: GPT-2 and LLaMA '
                          f'need {", ".join(neither)}.')
  for name, missing in misses.items():
    if not missing:
      return name
  raise ConversionError(
      'the model matches no Hugging Face family lm exports: LLaMA needs '
      f'{", ".join(misses["llama"])}; GPT-2 needs {", ".join(misses["gpt2"])}.')


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The HF config.json dict of `cfg` (without token ids; the caller adds those)."""
  dtype = cfg.param_dtype
  if family(cfg) == 'gpt2':
    return {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
            'vocab_size': cfg.vocab_size, 'n_embd': cfg.width, 'n_layer': cfg.num_layers,
            'n_head': cfg.num_heads, 'n_inner': cfg.mlp_dim, 'n_positions': cfg.max_len,
            'n_ctx': cfg.max_len, 'activation_function': 'gelu_new',
            'layer_norm_epsilon': cfg.norm_eps, 'tie_word_embeddings': True,
            'scale_attn_weights': True, 'resid_pdrop': cfg.dropout, 'embd_pdrop': cfg.dropout,
            'attn_pdrop': 0.0, 'initializer_range': cfg.init_std, 'torch_dtype': dtype}
  theta = cfg.rope_theta
  return {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
          'vocab_size': cfg.vocab_size, 'hidden_size': cfg.width,
          'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
          'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads,
          'head_dim': cfg.head_dim, 'hidden_act': 'silu', 'max_position_embeddings': cfg.max_len,
          'rms_norm_eps': cfg.norm_eps, 'tie_word_embeddings': cfg.tie_embeddings,
          # transformers < 5 reads rope_theta, >= 5 rope_parameters: write both.
          'rope_theta': theta, 'rope_parameters': {'rope_type': 'default', 'rope_theta': theta},
          'attention_bias': False, 'mlp_bias': False, 'attention_dropout': 0.0,
          'initializer_range': cfg.init_std, 'torch_dtype': dtype}


# ---- weights ------------------------------------------------------------------------------


class _Tensors:
  """HF tensors by name: `take` checks a tensor's shape and marks it used."""

  def __init__(self, tensors: Mapping[str, np.ndarray], dtype, source: str):
    self.tensors, self.dtype, self.source = tensors, dtype, source
    self.used: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise ConversionError(f'{self.source} has no tensor {name!r} (shape {shape}), which '
                            'config.json implies; is it a checkpoint of this model?')
    x = self.tensors[name]
    if tuple(x.shape) != tuple(shape):
      raise ConversionError(f'tensor {name!r} in {self.source} has shape {tuple(x.shape)}, '
                            f'but config.json implies {tuple(shape)}.')
    self.used.add(name)
    return np.asarray(x).astype(self.dtype, copy=False)

  def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
    extra = sorted(n for n in self.tensors if n not in self.used and n not in ignore
                   and not n.endswith(_IGNORED_SUFFIXES))
    if extra:
      shown = ', '.join(extra[:5]) + (f' and {len(extra) - 5} more' if len(extra) > 5 else '')
      raise ConversionError(f'{self.source} holds tensors the model has no place for: '
                            f'{shown}; does config.json describe this checkpoint?')


def _stack(layers: list[dict]) -> dict:
  """Per-layer nested dicts -> one nested dict with a leading layers axis."""
  first = layers[0]
  if isinstance(first, dict):
    return {k: _stack([layer[k] for layer in layers]) for k in first}
  return np.stack(layers)


def _layer(tree: dict, i: int) -> dict:
  return {k: _layer(v, i) if isinstance(v, dict) else np.asarray(v[i]) for k, v in tree.items()}


def _np(x: Any) -> np.ndarray:
  return np.asarray(x)


def gpt2_from_hf(cfg: ModelConfig, t: _Tensors) -> dict:
  d, n, h, f = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  # Checkpoints saved from GPT2Model lack the 'transformer.' prefix of GPT2LMHeadModel.
  p0 = 'transformer.' if any(k.startswith('transformer.') for k in t.tensors) else ''

  def norm(name):
    return {'scale': t.take(f'{p0}{name}.weight', (d,)), 'bias': t.take(f'{p0}{name}.bias', (d,))}

  layers = []
  for i in range(cfg.num_layers):
    p = f'{p0}h.{i}.'
    # c_attn's output columns are [q | k | v], each heads-major: -> [D, N, 3, H].
    qkv = t.take(p + 'attn.c_attn.weight', (d, 3 * d)).reshape(d, 3, n, h).transpose(0, 2, 1, 3)
    qkv_bias = t.take(p + 'attn.c_attn.bias', (3 * d,)).reshape(3, n, h).transpose(1, 0, 2)
    layers.append({
        'attn_norm': norm(f'h.{i}.ln_1'),
        'attn': {'qkv': {'kernel': qkv, 'bias': qkv_bias},
                 'out': {'kernel': t.take(p + 'attn.c_proj.weight', (d, d)).reshape(n, h, d),
                         'bias': t.take(p + 'attn.c_proj.bias', (d,))}},
        'mlp_norm': norm(f'h.{i}.ln_2'),
        'mlp': {'up': {'kernel': t.take(p + 'mlp.c_fc.weight', (d, f)),
                       'bias': t.take(p + 'mlp.c_fc.bias', (f,))},
                'down': {'kernel': t.take(p + 'mlp.c_proj.weight', (f, d)),
                         'bias': t.take(p + 'mlp.c_proj.bias', (d,))}},
    })
  params = {'embed': t.take(f'{p0}wte.weight', (cfg.vocab_size, d)),
            'pos_embed': t.take(f'{p0}wpe.weight', (cfg.max_len, d)),
            'blocks': _stack(layers), 'final_norm': norm('ln_f')}
  t.check_all_used(ignore=('lm_head.weight',))  # tied: a copy of wte when present
  return params


def gpt2_to_hf(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  d, n, h = cfg.width, cfg.num_heads, cfg.head_dim
  out = {'transformer.wte.weight': _np(params['embed']),
         'transformer.wpe.weight': _np(params['pos_embed']),
         'transformer.ln_f.weight': _np(params['final_norm']['scale']),
         'transformer.ln_f.bias': _np(params['final_norm']['bias'])}
  for i in range(cfg.num_layers):
    b, p = _layer(params['blocks'], i), f'transformer.h.{i}.'
    a, m = b['attn'], b['mlp']
    out.update({
        p + 'ln_1.weight': b['attn_norm']['scale'], p + 'ln_1.bias': b['attn_norm']['bias'],
        p + 'attn.c_attn.weight': a['qkv']['kernel'].transpose(0, 2, 1, 3).reshape(d, 3 * d),
        p + 'attn.c_attn.bias': a['qkv']['bias'].transpose(1, 0, 2).reshape(3 * d),
        p + 'attn.c_proj.weight': a['out']['kernel'].reshape(n * h, d),
        p + 'attn.c_proj.bias': a['out']['bias'],
        p + 'ln_2.weight': b['mlp_norm']['scale'], p + 'ln_2.bias': b['mlp_norm']['bias'],
        p + 'mlp.c_fc.weight': m['up']['kernel'], p + 'mlp.c_fc.bias': m['up']['bias'],
        p + 'mlp.c_proj.weight': m['down']['kernel'], p + 'mlp.c_proj.bias': m['down']['bias'],
    })
  return out


def llama_from_hf(cfg: ModelConfig, t: _Tensors) -> dict:
  d, n, k, h, f = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  g = n // k  # query heads per KV head: HF's query head j uses KV head j // g, as ours
  layers = []
  for i in range(cfg.num_layers):
    p = f'model.layers.{i}.'
    q_DKGH = t.take(p + 'self_attn.q_proj.weight', (n * h, d)).T.reshape(d, k, g, h)
    k_DK1H = t.take(p + 'self_attn.k_proj.weight', (k * h, d)).T.reshape(d, k, 1, h)
    v_DK1H = t.take(p + 'self_attn.v_proj.weight', (k * h, d)).T.reshape(d, k, 1, h)
    gate_DF = t.take(p + 'mlp.gate_proj.weight', (f, d)).T
    up_DF = t.take(p + 'mlp.up_proj.weight', (f, d)).T
    layers.append({
        'attn_norm': {'scale': t.take(p + 'input_layernorm.weight', (d,))},
        'attn': {'qkv': {'kernel': np.concatenate([q_DKGH, k_DK1H, v_DK1H], axis=2)},
                 'out': {'kernel': t.take(p + 'self_attn.o_proj.weight',
                                          (d, n * h)).T.reshape(n, h, d)}},
        'mlp_norm': {'scale': t.take(p + 'post_attention_layernorm.weight', (d,))},
        'mlp': {'up': {'kernel': np.stack([gate_DF, up_DF], axis=-1)},
                'down': {'kernel': t.take(p + 'mlp.down_proj.weight', (d, f)).T}},
    })
  params = {'embed': t.take('model.embed_tokens.weight', (cfg.vocab_size, d)),
            'blocks': _stack(layers), 'final_norm': {'scale': t.take('model.norm.weight', (d,))}}
  if cfg.tie_embeddings:
    t.check_all_used(ignore=('lm_head.weight',))
  else:
    params['unembed'] = t.take('lm_head.weight', (cfg.vocab_size, d)).T
    t.check_all_used()
  return params


def llama_to_hf(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  d, n, k, h = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  g = n // k
  out = {'model.embed_tokens.weight': _np(params['embed']),
         'model.norm.weight': _np(params['final_norm']['scale'])}
  if not cfg.tie_embeddings:
    out['lm_head.weight'] = _np(params['unembed']).T
  for i in range(cfg.num_layers):
    b, p = _layer(params['blocks'], i), f'model.layers.{i}.'
    qkv_DKCH = b['attn']['qkv']['kernel']
    up_DF2 = b['mlp']['up']['kernel']
    out.update({
        p + 'input_layernorm.weight': b['attn_norm']['scale'],
        p + 'self_attn.q_proj.weight': qkv_DKCH[:, :, :g].reshape(d, n * h).T,
        p + 'self_attn.k_proj.weight': qkv_DKCH[:, :, g].reshape(d, k * h).T,
        p + 'self_attn.v_proj.weight': qkv_DKCH[:, :, g + 1].reshape(d, k * h).T,
        p + 'self_attn.o_proj.weight': b['attn']['out']['kernel'].reshape(n * h, d).T,
        p + 'post_attention_layernorm.weight': b['mlp_norm']['scale'],
        p + 'mlp.gate_proj.weight': up_DF2[..., 0].T,
        p + 'mlp.up_proj.weight': up_DF2[..., 1].T,
        p + 'mlp.down_proj.weight': b['mlp']['down']['kernel'].T,
    })
  return out


_FROM_HF: dict[str, Callable[[ModelConfig, _Tensors], dict]] = {
    'gpt2': gpt2_from_hf, 'llama': llama_from_hf}
_TO_HF: dict[str, Callable[[ModelConfig, dict], dict[str, np.ndarray]]] = {
    'gpt2': gpt2_to_hf, 'llama': llama_to_hf}


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], *,
                   source: str = 'the checkpoint') -> dict:
  """Our nested params (numpy, cfg.param_dtype) from HF tensors; errors name the tensor."""
  dtype = np.dtype(cfg.jnp_param_dtype)
  return _FROM_HF[family(cfg)](cfg, _Tensors(tensors, dtype, source))


def params_to_hf(cfg: ModelConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF tensors (contiguous numpy, C order) from our params, named as transformers saves them."""
  tensors = _TO_HF[family(cfg)](cfg, jax_free(params))
  return {name: np.ascontiguousarray(x) for name, x in tensors.items()}


def jax_free(tree: Any) -> Any:
  """A nested dict of arrays as numpy arrays (device arrays are copied to the host)."""
  if isinstance(tree, Mapping):
    return {k: jax_free(v) for k, v in tree.items()}
  return np.asarray(tree)
