"""Base experiment: a small LLaMA-style decoder on the embedded Python stdlib corpus.

Every other config in this folder starts from `get_config()` here and overrides
fields; `lm.config.validate` checks the result once at start-up. Each section here has its
typed twin in lm/config/sections/ (the field's type, choices and checks): a new key is
added in both places (tests/test_config.py checks they match).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Fine-tuning (docs/finetuning.md): start from the parameters of a workdir or checkpoint
  # step directory ('' = random init). The run starts at step 0 in its own workdir.
  c.init_from = ''
  # init_from: also take the optimizer state (moments) from it; False = a fresh optimizer
  c.init_from_opt_state = False

  # ---- data (lm/data) ------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = 'stdlib'  # 'stdlib' | 'text' | 'tfds' | 'cleaned' (python -m lm clean)
  # text: a file, a directory or a glob of .txt / .jsonl files; cleaned: clean.output's dir
  c.data.path = ''
  c.data.jsonl_field = 'text'  # text: the field of each .jsonl line that holds the text
  c.data.tfds_name = ''  # tfds: a TFDS dataset name (needs network the first time)
  c.data.tfds_text_feature = 'text'
  # tfds: the split documents are read from (TFDS slicing works: 'train[:10%]')
  c.data.tfds_split = 'train'
  # tfds: where TFDS keeps datasets; '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.tfds_data_dir = ''
  # 'document': validation gets whole documents; 'tail': the last val_fraction of the text
  c.data.split = 'document'
  c.data.val_fraction = 0.05
  c.data.max_docs = 0  # read at most this many documents (in source order); 0: all
  c.data.cache_dir = ''  # prepared ArrayRecord files + tokenizers; '' -> $LM_CACHE or ~/.cache/lm
  c.data.seq_len = 128  # tokens per training row (inputs and targets each)
  # Training rows start every this many tokens: 0 = seq_len + 1 (no overlap); smaller
  # values give overlapping windows, like nanoGPT's random crops (validation never overlaps).
  c.data.train_row_stride = 0
  # Multi-host: 0 = the train rows in shards of at most 256 MiB, every host reading its rows
  # of one global shuffle from all of them; S > 0 = exactly S shards (row r in shard r % S),
  # each host opening and reading only its own (shards p, p+P, ...; P must divide S), the
  # union of the hosts' batches still the 1-host batch (lm/data/loader.py ShardTrainIterator).
  c.data.train_shards = 0
  # Domains (lm/data/mixture.py): (domain name, source, weight) triples; when set it
  # replaces data.source. A source is 'stdlib' (all of it), 'stdlib:code' (the stdlib with
  # docstrings and comments removed), 'stdlib:prose' (only its docstrings and comments) or
  # a .txt/.jsonl file, directory or glob. Weights are sampling probabilities (normalised;
  # 0: evaluated but not trained on).
  # Every token carries its domain id (the triple's index); eval reports each domain.
  c.data.mixture = ()
  # 'text': documents for language modelling | 'sft': prompt/response (or chat
  # messages) records, loss on the responses | 'classify': text/label records, one per row
  # | 'preference': prompt/chosen/rejected records for train.task='dpo' (lm/data/preference.py).
  # sft/classify read JSONL at data.path (source 'text') or generate records from the
  # stdlib (source 'stdlib'; lm/data/examples.py)
  c.data.format = 'text'
  c.data.tokenizer = ml_collections.ConfigDict()
  # 'sentencepiece' | 'byte' | 'char' | 'hf' (a Hugging Face tokenizer.json, as
  # `python -m lm.convert from-hf` sets up for an imported model)
  c.data.tokenizer.kind = 'sentencepiece'
  c.data.tokenizer.model_type = 'bpe'  # sentencepiece: 'bpe' | 'unigram'
  c.data.tokenizer.vocab_size = 2048  # sentencepiece only; byte/char derive their own
  # sentencepiece trains on a fixed sample of at most this much text
  c.data.tokenizer.max_train_chars = 5_000_000
  c.data.tokenizer.path = ''  # hf only: a directory holding an HF tokenizer.json

  # ---- model (lm/model) ----------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # 0: take the tokenizer's vocabulary size
  c.model.num_layers = 4
  c.model.width = 192
  c.model.num_heads = 6
  c.model.num_kv_heads = 2  # < num_heads: grouped-query attention; 1: multi-query
  # Size of each attention head; 0: width / num_heads. A pruned run (python -m lm prune)
  # sets it, since removing heads or embedding channels keeps the heads' size.
  c.model.head_dim = 0
  c.model.mlp_dim = 512
  c.model.max_len = 0  # learned positions: table size; 0: data.seq_len
  c.model.norm = 'rmsnorm'  # 'rmsnorm' | 'layernorm'
  c.model.norm_eps = 1e-5
  c.model.mlp = 'swiglu'  # 'swiglu' | 'gelu'
  c.model.position = 'rope'  # 'rope' | 'learned'
  c.model.rope_theta = 10_000.0
  c.model.use_bias = False
  c.model.tie_embeddings = False
  c.model.dropout = 0.0
  c.model.init_std = 0.02
  c.model.param_dtype = 'float32'  # 'float32' | 'bfloat16'
  c.model.dtype = 'float32'  # compute dtype
  c.model.remat = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs)
  # Same stacked layout either way: unrolled is faster on CPU, rolled compiles faster.
  c.model.unroll_layers = True
  # Attention implementation (lm/model/attention_kernels.py; the start-up summary prints
  # the pick): 'auto' (GPU: cuDNN in bfloat16 when the head dim fits; TPU: splash;
  # otherwise dense XLA while a row's scores are small and T <= 2048, else blockwise) |
  # 'xla' (dense [T, T] scores) | 'blockwise' (plain JAX, O(T) memory, any backend) |
  # 'cudnn' (GPU, bfloat16) | 'flash' (Pallas GPU kernel with segment ids, one device) |
  # 'splash' (Pallas TPU splash kernel with segment ids)
  c.model.attention = 'auto'
  # Mixture of experts in place of the dense MLP (lm/model/moe.py, docs/moe.md).
  c.model.moe = ml_collections.ConfigDict()
  c.model.moe.num_experts = 0  # 0: dense MLP everywhere
  c.model.moe.top_k = 1  # experts per token (1 or 2) for 'learned' / 'domain+learned' routing
  c.model.moe.expert_mlp_dim = 0  # hidden size of each expert; 0: model.mlp_dim
  # Expert slots per row = capacity_factor * tokens * top_k / num_experts; tokens over
  # capacity are dropped (counted in the metrics). 0: dropless (every token is computed).
  c.model.moe.capacity_factor = 1.25
  c.model.moe.shared_expert = False  # add one dense MLP every token goes through
  c.model.moe.aux_loss_weight = 0.01  # load-balancing loss weight (summed over MoE layers)
  c.model.moe.z_loss_weight = 0.001  # router z-loss weight (summed over MoE layers)
  c.model.moe.every = 1  # 1: every layer is MoE; 2: every other layer (the 2nd, 4th, ...)
  # 'learned' | 'domain' (each domain owns num_experts/num_domains experts, DEMix) |
  # 'domain+learned' (a learned top_k inside the token's domain's experts)
  c.model.moe.routing = 'learned'
  c.model.moe.num_domains = 0  # domain routing: must equal len(data.mixture)
  # 'grouped': tokens sorted by expert through a grouped matmul (work ~ tokens * top_k;
  # all-to-all over mesh.expert) | 'dispatch': one-hot [B, T, E, C] dispatch (GShard)
  c.model.moe.impl = 'grouped'
  # False: a bidirectional (BERT-style) encoder, attention limited only by segments
  c.model.causal = True
  # > 0 adds a classification head over the pooled hidden state (last token for a causal
  # model, first token for an encoder); train.task='classify' trains it
  c.model.num_classes = 0

  # ---- LoRA adapters (lm/model/lora.py; rank 0 = off) --------------------------
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # > 0: only the adapters (and a classification head) are trained
  c.lora.alpha = 16.0  # the adapter's output is scaled by alpha / rank
  c.lora.dropout = 0.0  # dropout on the adapter's input during training
  # projections that get adapters, of 'qkv', 'out', 'mlp_in', 'mlp_out'
  c.lora.targets = ('qkv', 'out')

  # ---- optimizer (lm/train/optimizer.py) -------------------------------------
  c.optimizer = ml_collections.ConfigDict()
  # 'adamw' | 'muon' (Muon on the 2-D weight matrices, AdamW with optimizer.lr on
  # embeddings, norms, biases and the output head)
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 3e-3
  # 'cosine' | 'linear' | 'constant' (all after warmup) | 'wsd' (warmup, stable at lr,
  # then a linear decay to min_lr over the last optimizer.decay_fraction of the steps)
  c.optimizer.schedule = 'cosine'
  c.optimizer.decay_fraction = 0.2  # wsd only
  c.optimizer.muon_lr = 0.02  # muon: the matrices' peak learning rate (same schedule shape)
  c.optimizer.muon_momentum = 0.95  # muon: Nesterov momentum of the orthogonalised update
  # muon: Newton-Schulz iterations per update (each ~2 small matmuls per matrix; fewer are
  # cheaper and orthogonalise more roughly)
  c.optimizer.muon_ns_steps = 5
  c.optimizer.warmup_steps = 100
  c.optimizer.min_lr = 3e-4  # the schedule's end value
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  # Parameter kinds weight decay skips, of 'norm', 'bias', 'embed' (nanoGPT: norm, bias).
  c.optimizer.weight_decay_exclude = ('norm', 'bias', 'embed')
  c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables

  # ---- training loop (lm/train/loop.py) ------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.steps = 1200
  c.train.batch_size = 16  # global, in rows of data.seq_len tokens
  c.train.grad_accum = 1  # microbatches per step; batch_size must divide by it
  c.train.steps_per_dispatch = 10  # optimizer steps run inside one jit call (lax.scan)
  c.train.log_every = 10  # must be a multiple of steps_per_dispatch
  c.train.eval_every = 200
  c.train.eval_batches = 10
  c.train.sample_tokens = 200  # tokens generated from a validation prompt at the end
  c.train.sample_prompt_tokens = 32
  c.train.sample_temperature = 0.8
  # 'lm': next-token | 'sft': next-token on data.format='sft' (loss on responses only) |
  # 'mlm': masked-LM for an encoder (model.causal=False) | 'classify': the head's label
  c.train.task = 'lm'
  c.train.mlm_rate = 0.15  # mlm: fraction of tokens selected (80% [MASK], 10% random, 10% kept)
  # > 0: stop at the first evaluation whose eval loss is <= this (saving a checkpoint)
  c.train.target_eval_loss = 0.0
  # profile_steps > 0: a jax.profiler trace (TensorBoard / Perfetto) of the dispatches
  # covering steps profile_start_step+1 .. profile_start_step+profile_steps, in <workdir>/profile
  c.train.profile_start_step = 10
  c.train.profile_steps = 0
  # 'dpo': preference tuning on data.format='preference' from init_from (lm/train/preference.py)
  c.train.dpo = ml_collections.ConfigDict()
  # 'sigmoid': DPO, -log sigmoid(beta * margin of log-ratios to the reference) |
  # 'simpo': SimPO, reference-free, beta * length-normalised log-prob margin - simpo_gamma |
  # 'orpo': ORPO, reference-free, SFT loss on chosen + orpo_lambda * odds-ratio loss
  c.train.dpo.loss = 'sigmoid'
  c.train.dpo.beta = 0.1  # scale of the implicit reward (SimPO papers use about 2)
  c.train.dpo.label_smoothing = 0.0  # sigmoid: the share of pairs assumed mislabelled (cDPO)
  c.train.dpo.simpo_gamma = 0.5  # simpo: the target reward margin
  # orpo: weight of -log sigmoid(log odds(chosen) - log odds(rejected)) next to the chosen
  # response's mean NLL (the odds of a response: p / (1 - p), p its mean token probability)
  c.train.dpo.orpo_lambda = 0.1
  # 'model': the frozen initial model runs in every step (with LoRA: the base, adapters off)
  # | 'precomputed': its log-probabilities are computed once before training
  c.train.dpo.reference = 'model'
  # 'distill': next-token on data.format='text' with a teacher (lm/train/distill.py):
  # loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross entropy
  c.train.distill = ml_collections.ConfigDict()
  c.train.distill.teacher = ''  # the teacher's workdir (same tokenizer; any depth/width)
  c.train.distill.alpha = 0.5  # weight of the KL term
  c.train.distill.temperature = 1.0  # T: both distributions are softened by it
  # > 0: offline, the teacher's top-k logits per token are computed once (before training)
  # and the KL is over them; 0: the teacher runs in every step on the whole vocabulary
  c.train.distill.offline_top_k = 0

  # ---- checkpoints (lm/checkpoint.py) ----------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 400
  c.checkpoint.keep = 2  # the last K; the best by eval loss is kept as well
  c.checkpoint.async_save = True

  # ---- runtime (lm/runtime.py; applied by lm.main / lm.bench before jax starts) --------
  c.runtime = ml_collections.ConfigDict()
  # Split the host CPU into this many XLA devices for data parallelism across cores:
  # 0 = one device (XLA's default), -1 = one per core. Ignored when XLA_FLAGS sets it.
  c.runtime.cpu_devices = 0
  # jax's persistent compilation cache: a rerun, resume or sweep point loads identical
  # compiled programs instead of compiling them. 'auto': xla/ under the data cache
  # (data.cache_dir, $LM_CACHE or ~/.cache/lm); '' = off; else a directory.
  c.runtime.compilation_cache_dir = 'auto'
  c.runtime.compilation_cache_min_compile_secs = 0.0  # programs compiled faster are not kept

  # ---- mesh (lm/parallel) ------------------------------------------------
  # Mesh axes, outermost first: data, fsdp, sequence, expert, tensor. `mesh.<axis>` are the sizes
  # inside one slice (TPU) or process (CPU/GPU), over fast ICI links; one may be -1 to take
  # the remaining devices. docs/scaling_mesh.md explains the choices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  # context parallelism: each row's tokens split over it (attention sees all of the row's
  # keys; docs/scaling.md)
  c.mesh.sequence = 1
  c.mesh.expert = 1  # expert parallelism: MoE experts split over it (it also splits the batch)
  c.mesh.tensor = 1
  # Sizes across slices/processes (DCN); any > 1 builds a hybrid mesh whose axis is
  # <axis> x dcn_<axis> long. One may be -1 to take the remaining slices/processes.
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1
  c.mesh.dcn_sequence = 1
  c.mesh.dcn_expert = 1
  c.mesh.dcn_tensor = 1
  # How the model is split (logical axis -> mesh axes, lm/parallel/presets.py):
  # 'fsdp_tensor' (FSDP + tensor parallel) | 'data' (pure data parallel, params replicated)
  # | 'fsdp' (ZeRO-3: params and optimizer state over fsdp) | 'tensor' (Megatron + data).
  c.mesh.preset = 'fsdp_tensor'
  # Per-logical-axis overrides on top of the preset: (name, mesh axes) pairs, e.g.
  # (('vocab', ()),) keeps the vocabulary unsplit; () or '' means replicated.
  c.mesh.rules = ()
  return c
