"""A LLaMA-3-8B-shaped decoder, meant for a TPU v5p-128 slice (64 chips) or larger.

Shapes (LLaMA 3 8B): 32 layers, width 4096, 32 heads with 8 key/value heads, SwiGLU MLP
14336, RMSNorm, RoPE theta 500000, untied embeddings, a 128256-row vocabulary;
bfloat16 compute with float32 master weights (8.03B parameters).

Vocabulary: as configs/llama_1b.py — SentencePiece trains up to 128000 BPE pieces on the
training split, and the embedding keeps LLaMA 3's 128256 rows.

Data: TFDS `wikipedia/20230601.en` (prepare it once with `tfds build ... --file_format=
array_record`), or `--config.data.source=text --config.data.path=...` for local text;
on a pod every host needs the prepared data (a shared filesystem or data.cache_dir on
gs://).

Mesh: FSDP over the slice's chips (`mesh.fsdp=-1`): on 64 chips each holds 1/64 of the
parameters, gradients and Adam moments (~2.5 GB) and computes 2 rows of 4096 tokens per
microbatch. Pod overrides (docs/scaling.md):
  several slices:      --config.mesh.dcn_data=<slices>   (data parallel over DCN)
  FSDP x tensor (GPU): --config.mesh.fsdp=-1 --config.mesh.tensor=8 (tensor inside a node)
  8x H100 node:        --config.train.grad_accum=16 (1 row per GPU per microbatch)
`python -m lm.plan --config=configs/llama_8b.py --devices=64 --compile=false` prints the
per-device memory of a mesh in seconds without allocating anything.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = 'tfds'
  c.data.tfds_name = 'wikipedia/20230601.en'
  c.data.tfds_split = 'train'
  c.data.seq_len = 4096
  c.data.tokenizer.kind = 'sentencepiece'
  c.data.tokenizer.model_type = 'bpe'
  c.data.tokenizer.vocab_size = 128_000
  c.data.tokenizer.max_train_chars = 100_000_000

  c.model.vocab_size = 128_256
  c.model.num_layers = 32
  c.model.width = 4096
  c.model.num_heads = 32
  c.model.num_kv_heads = 8
  c.model.mlp_dim = 14336
  c.model.norm = 'rmsnorm'
  c.model.norm_eps = 1e-5
  c.model.mlp = 'swiglu'
  c.model.position = 'rope'
  c.model.rope_theta = 500_000.0
  c.model.use_bias = False
  c.model.tie_embeddings = False
  c.model.dropout = 0.0
  c.model.init_std = 0.02
  c.model.param_dtype = 'float32'  # master weights; 'bfloat16' halves parameter + Adam memory
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full'
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

  c.train.steps = 150_000  # x 1,048,576 tokens = 157B tokens
  c.train.batch_size = 256  # x 4096 tokens = 1M tokens per step
  c.train.grad_accum = 2  # 128 rows per microbatch: 2 per chip on 64 chips
  c.train.steps_per_dispatch = 10
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_batches = 20
  c.train.sample_prompt_tokens = 64
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2

  c.mesh.data = 1
  c.mesh.fsdp = -1  # all chips of the slice
  c.mesh.tensor = 1
  return c
