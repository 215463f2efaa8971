"""Decoding on a device mesh: parameters and the KV cache split by the logical-axis rules.

Tensor parallelism needs nothing beyond what training uses: the parameters are placed with
the config's rules (`mesh.preset` + `mesh.rules`: heads, kv_heads, mlp and vocab over the
tensor axis), the cache is split like the K/V activations (batch over the batch axes,
kv_heads over tensor), and XLA inserts the collectives.
Parameters go onto the mesh with `lm.run.load_run(..., mesh=...)` (or lm.run.place_params);
`Decoder(model_def, mesh=..., rules=...)` does the rest.
"""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding

from lm import parallel
from lm.errors import UserError
from lm.parallel.rules import rules_dict

CACHE_AXES = ('layers', 'batch', None, 'kv_heads', 'head_dim')  # [L, B, S, K, H]


def decode_mesh(*, tensor: int = 1, data: int = 1, devices=None) -> Mesh:
  """A mesh of data x tensor devices (the first data * tensor of `devices`, default all)."""
  devices = list(jax.devices() if devices is None else devices)
  if tensor < 1 or data < 1:
    raise UserError(f'mesh sizes must be >= 1, got data={data} tensor={tensor}')
  if data * tensor > len(devices):
    raise UserError(f'a mesh of data={data} x tensor={tensor} needs {data * tensor} devices '
                     f'but {len(devices)} are available; on a CPU, split it into more devices '
                     '(--cpu_devices or XLA_FLAGS=--xla_force_host_platform_device_count=N)')
  sizes = ml_collections.ConfigDict({a: 1 for a in parallel.MESH_AXES})
  sizes.data, sizes.tensor = data, tensor
  return parallel.build_mesh(sizes, devices[:data * tensor])


def cache_sharding(mesh: Mesh, rules, shape: tuple[int, ...]) -> NamedSharding:
  """Where a [layers, B, S, K, H] cache lives: rows over the batch axes, kv heads over tensor."""
  spec = parallel.logical_to_spec(CACHE_AXES, rules_dict(rules), mesh, shape)
  return NamedSharding(mesh, spec)
