"""GPT-2 small (124M): nanoGPT's `train_gpt2.py` recipe, meant for one 8-GPU node.

Shapes: 12 layers, width 768, 12 heads, MLP 3072, GELU, LayerNorm with biases, learned
positions over a 1024-token context, tied input/output embeddings.

Vocabulary: GPT-2's tokenizer is a byte-level BPE of 50257 ids; we do not download it.
Instead SentencePiece trains a BPE of (up to) 50257 pieces on the run's own training
split (`data.tokenizer.vocab_size`), and the embedding table keeps 50304 rows
(`model.vocab_size`, 50257 rounded up to a multiple of 64 as nanoGPT does, for faster
matmuls); the rows past the tokenizer's ids are never used as targets.

Data: TFDS `lm1b` (One Billion Words), prepared once with
`tfds build lm1b --file_format=array_record` (it downloads ~1.8 GB the first time). Any
local text works instead: `--config.data.source=text --config.data.path='/data/owt/*.txt'`.

Mesh: data parallel over every device (`mesh.data=-1`): 8 GPUs each take 12 rows of
each of the 5 microbatches of a 480 x 1024 = 491,520-token step. On a TPU slice the same
config runs as is; for several hosts launch it with launch/tpu_vm.sh or
launch/slurm.sbatch (docs/scaling.md). `python -m lm.plan --config=configs/gpt2_124m.py
--devices=8` prints the memory per device.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = 'tfds'
  c.data.tfds_name = 'lm1b'
  c.data.tfds_split = 'train'
  c.data.seq_len = 1024
  c.data.tokenizer.kind = 'sentencepiece'
  c.data.tokenizer.model_type = 'bpe'
  c.data.tokenizer.vocab_size = 50257  # GPT-2's vocabulary size, trained on our data
  c.data.tokenizer.max_train_chars = 50_000_000

  c.model.vocab_size = 50304  # 50257 padded to a multiple of 64 (nanoGPT)
  c.model.num_layers = 12
  c.model.width = 768
  c.model.num_heads = 12
  c.model.num_kv_heads = 12
  c.model.mlp_dim = 3072
  c.model.max_len = 1024
  c.model.norm = 'layernorm'
  c.model.mlp = 'gelu'
  c.model.position = 'learned'
  c.model.use_bias = True
  c.model.tie_embeddings = True
  c.model.dropout = 0.0
  c.model.init_std = 0.02
  c.model.param_dtype = 'float32'
  c.model.dtype = 'bfloat16'  # bfloat16 matmuls, float32 master weights
  c.model.remat = 'none'
  c.model.unroll_layers = False  # accelerators: the rolled layer loop compiles faster

  c.optimizer.lr = 6e-4
  c.optimizer.min_lr = 6e-5
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 2000
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.weight_decay_exclude = ('norm', 'bias')  # nanoGPT decays the embeddings
  c.optimizer.grad_clip = 1.0

  c.train.steps = 600_000
  c.train.batch_size = 480  # x 1024 tokens: nanoGPT's ~0.5M tokens per step
  c.train.grad_accum = 5  # 96 rows per microbatch, 12 per GPU on 8 GPUs
  c.train.steps_per_dispatch = 10
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_batches = 20
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2

  c.mesh.data = -1  # pure data parallelism; see docs/scaling.md for FSDP/tensor overrides
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  return c
