"""Compile time of the train state's init program on CPU, LLVM's default level against the
level 0 that lm.train.state uses there (docs/benchmarks.md, "Compile time").

  python experiments/compile_time/init_compile.py [--layers=1]

Builds the tests' tiny model (width 32, byte vocabulary) on 8 fake CPU devices, compiles
`fresh_state` under jit both ways and prints the seconds and whether the values agree.
"""

import argparse
import os
import time

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lm.model import ModelConfig, ModelDef  # noqa: E402
from lm.train import state  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layers', type=int, default=1, help='transformer blocks')
  args = parser.parse_args()
  cfg = ModelConfig(vocab_size=259, num_layers=args.layers, width=32, num_heads=2,
                    num_kv_heads=2, mlp_dim=64, max_len=16)
  model_def, optimizer = ModelDef.create(cfg), optax.adamw(1e-3)
  mesh = jax.make_mesh((8,), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shapes = jax.eval_shape(lambda: state.fresh_state(model_def, optimizer, 0))
  shardings = jax.tree.map(lambda _: replicated, shapes)
  values = {}
  for name, options in (('default', None), ('level 0', state.CPU_INIT_COMPILER_OPTIONS)):
    fn = jax.jit(lambda: state.fresh_state(model_def, optimizer, 0), out_shardings=shardings,
                 compiler_options=options)
    lowered = fn.lower()
    start = time.perf_counter()
    compiled = lowered.compile()
    print(f'{name}: compile {time.perf_counter() - start:.2f} s')
    values[name] = jax.tree.leaves(compiled())
  diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for a, b in zip(values['default'], values['level 0'], strict=True)
             if a.dtype != np.uint32)
  print(f'largest difference between the two inits: {diff:.3g}')


if __name__ == '__main__':
  main()
