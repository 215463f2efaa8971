"""The compiled train step's temporary memory with blockwise attention grows linearly in T
(XLA's memory analysis, as lm.plan reads it): dense [T, T] scores would make the T=4096
figure ~64x the T=512 one. A small vocabulary, so that the [B, T, V] logits (8x) do not
hide what attention keeps. The whole train step, not the attention call alone: the
quadratic memory came from differentiating the model's scan over layers
(lm/model/attention_blockwise.py, _loop_variant)."""

from configs import default
from lm.tools import plan as plan_lib


def _temp_bytes(seq_len: int, attention: str) -> int:
  c = default.get_config()
  c.data.tokenizer.kind = 'byte'
  c.data.seq_len = seq_len
  c.model.update(num_layers=1, width=32, num_heads=2, num_kv_heads=1, mlp_dim=64,
                 attention=attention)
  c.train.batch_size = 1
  c.train.steps_per_dispatch = 1
  c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
  plan = plan_lib.make_plan(c, num_devices=1)
  return plan_lib.compile_memory(plan)['temp']


def test_blockwise_train_step_temp_memory_is_linear_in_seq_len():
  short, long = _temp_bytes(512, 'blockwise'), _temp_bytes(4096, 'blockwise')
  assert long <= 12 * short, (short, long, long / short)
