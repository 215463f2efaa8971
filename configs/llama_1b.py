"""A LLaMA-3.2-1B-shaped decoder, meant for 8 accelerators with >= 32 GB each.

Shapes (LLaMA 3.2 1B): 16 layers, width 2048, 32 heads with 8 key/value heads
(grouped-query attention), SwiGLU MLP 8192, RMSNorm, RoPE theta 500000, tied
embeddings, a 128256-row embedding table.

Vocabulary: LLaMA 3's tokenizer is not downloaded. SentencePiece trains a BPE of up to
128000 pieces on the training split (`data.tokenizer.vocab_size`; fewer when the sample
of `max_train_chars` cannot support that many merges) and the embedding keeps LLaMA 3's
128256 rows (`model.vocab_size`) so the shapes and parameter count (1.24B) match.
`--config.model.vocab_size=0` sizes the table to the trained tokenizer instead.

Data: TFDS `wikipedia/20230601.en`, prepared once with
`tfds build wikipedia/20230601.en --file_format=array_record`; or local text with
`--config.data.source=text --config.data.path='/data/corpus/*.jsonl'`.

Mesh: FSDP over every device (`mesh.fsdp=-1`): one 8x H100/A100 node, or a TPU
v4-16 / v5p-16 slice (8 chips). Parameters, gradients and Adam moments are split 8 ways;
each device computes 8 rows of 2048 tokens per microbatch. For more devices raise
`train.batch_size` or add data parallelism across slices/nodes with
`--config.mesh.dcn_data=N` (docs/scaling.md). Check a mesh before launching:
`python -m lm.plan --config=configs/llama_1b.py --devices=8`.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = 'tfds'
  c.data.tfds_name = 'wikipedia/20230601.en'
  c.data.tfds_split = 'train'
  c.data.seq_len = 2048
  c.data.tokenizer.kind = 'sentencepiece'
  c.data.tokenizer.model_type = 'bpe'
  c.data.tokenizer.vocab_size = 128_000  # LLaMA 3's BPE size, trained on our data
  c.data.tokenizer.max_train_chars = 100_000_000

  c.model.vocab_size = 128_256  # LLaMA 3's embedding rows (128000 BPE + 256 special)
  c.model.num_layers = 16
  c.model.width = 2048
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.mlp_dim = 8192
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-5
  c.model.mlp = 'swiglu'
  c.model.position = 'rope'
  c.model.rope_theta = 500_000.0
  c.model.use_bias = False
  c.model.tie_embeddings = True
  c.model.dropout = 0.0
  c.model.init_std = 0.02
  c.model.param_dtype = 'float32'  # float32 master weights and Adam moments
  c.model.dtype = 'bfloat16'  # bfloat16 matmuls
  c.model.remat = 'full'  # keep only each layer's input; recompute the rest backwards
  c.model.unroll_layers = False

  c.optimizer.lr = 3e-4
  c.optimizer.min_lr = 3e-5
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 2000
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.weight_decay_exclude = ('norm', 'bias', 'embed')
  c.optimizer.grad_clip = 1.0

  c.train.steps = 100_000  # x 262,144 tokens = 26B tokens (~20 per parameter)
  c.train.batch_size = 128  # x 2048 tokens per step
  c.train.grad_accum = 2  # 64 rows per microbatch: 8 per device on 8 devices
  c.train.steps_per_dispatch = 10
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_batches = 20
  c.train.sample_prompt_tokens = 64
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2

  c.mesh.data = 1
  c.mesh.fsdp = -1  # FSDP over all devices (ICI); multi-slice: --config.mesh.dcn_data=N
  c.mesh.tensor = 1
  return c
