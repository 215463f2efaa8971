"""The train state (params, optimizer state, step, RNG) and its sharded creation.

The state is a plain dict of jax.Arrays: Flax NNX modules are split into a static
graph definition and pure parameters at the jit boundary and merged back inside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lm import parallel
from lm.model import ModelDef


def state_shardings(model_def: ModelDef, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules) -> dict:
  """NamedShardings for every leaf of the train state, from the logical-axis rules."""
  abstract_params = jax.eval_shape(model_def.init_params, jax.random.key(0))
  param_sh = parallel.shardings_for(model_def.logical_axes(), abstract_params, mesh, rules)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: parallel.replicated(mesh))
  rep = parallel.replicated(mesh)
  return {'params': param_sh, 'opt_state': opt_sh, 'step': rep, 'rng': rep}


def fresh_state(model_def: ModelDef, optimizer: optax.GradientTransformation, seed: int) -> dict:
  """Step 0: parameters from `seed`, zeroed optimizer moments, the training RNG."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  params = model_def.init_params(init_key)
  return {'params': params, 'opt_state': optimizer.init(params),
          'step': jnp.zeros((), jnp.int32), 'rng': jax.random.key_data(train_key)}


# The init program is one pass of threefry over every parameter: run once, and on CPU
# LLVM's full optimization of its hash rounds took 5.4 s to compile for a one-layer model
# where level 0 took 1.1-1.6 s (idle machine; docs/benchmarks.md, "Compile time"). Level 0
# changes some initial values by an ulp (the normal's erf_inv), never the distribution.
CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0,
                             'xla_llvm_disable_expensive_passes': True}


def init_state(model_def: ModelDef, optimizer: optax.GradientTransformation, seed: int,
               shardings: dict) -> dict:
  """A fresh train state, created directly in its sharded layout."""
  platform = next(iter(jax.tree.leaves(shardings)[0].device_set)).platform
  options = CPU_INIT_COMPILER_OPTIONS if platform == 'cpu' else None
  return jax.jit(lambda: fresh_state(model_def, optimizer, seed), out_shardings=shardings,
                 compiler_options=options)()


def abstract_state(model_def: ModelDef, optimizer: optax.GradientTransformation, seed: int,
                   shardings: dict) -> dict:
  """ShapeDtypeStructs (with shardings) of the state: what a restore fills in."""
  shapes = jax.eval_shape(lambda: fresh_state(model_def, optimizer, seed))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
