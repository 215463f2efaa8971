"""ModelDef: a model's static NNX graph plus abstract parameters, so that pure parameter
dicts (what jit, Orbax and the mesh see) turn back into a callable Transformer."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from lm.model.config import ModelConfig
from lm.model.transformer import Transformer


def to_pure(state: nnx.State) -> dict:
  return nnx.to_pure_dict(state) if hasattr(nnx, 'to_pure_dict') else state.to_pure_dict()


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """What turns pure parameters back into a callable module."""

  cfg: ModelConfig
  graphdef: nnx.GraphDef
  abstract_params: nnx.State  # shapes + metadata, used to rebuild an nnx.State

  @classmethod
  def create(cls, cfg: ModelConfig) -> ModelDef:
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    return cls(cfg, graphdef, params)

  def merge(self, params: dict) -> Transformer:
    state = jax.tree.map(lambda x: x, self.abstract_params)  # a fresh copy to fill
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def logical_axes(self) -> dict:
    return to_pure(nnx.eval_shape(lambda: Transformer(self.cfg, rngs=nnx.Rngs(0))).logical_axes())

  def init_params(self, key: jax.Array) -> dict:
    return to_pure(nnx.state(Transformer(self.cfg, rngs=nnx.Rngs(params=key)), nnx.Param))
