"""Runs an exported lm artifact: `python run.py --prompt='def ' [--max_new_tokens=50 ...]`.

This file is copied into every artifact as run.py by `python -m lm.export`. It imports
only jax, numpy and, for a SentencePiece or Hugging Face tokenizer, sentencepiece or
tokenizers - never lm or flax - so it runs wherever jax does. From Python:

    import run                     # with the artifact directory on sys.path
    art = run.Artifact('ART')
    art.generate([[1, 2, 3]], max_new_tokens=20, temperature=0.0)   # token ids
    art.generate_text(['def '], max_new_tokens=20)                   # text

Decoding mirrors lm.infer.Decoder: prompts right-padded to a multiple of the prefill
bucket, prefill, then one step per token; the n-th token is drawn with
fold_in(key(seed), n), so the same seed and batch give the Decoder's tokens.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

HERE = pathlib.Path(__file__).resolve().parent
SPACE_MARK = '\u2581'  # SentencePiece's space piece: spelled with its byte pieces


class ArtifactError(Exception):
  """The artifact or a request is not usable; the message names the file or field."""


# ---- tokenizers (the same ids as lm.data.tokenizers) -----------------------------------------


class Tokenizer:
  """byte | char | sentencepiece | hf, as saved in the artifact's tokenizer/ directory."""

  def __init__(self, directory: pathlib.Path):
    meta_path = directory / 'tokenizer.json'
    if not meta_path.is_file():
      raise ArtifactError(f'{meta_path} is missing; the artifact is incomplete')
    meta = json.loads(meta_path.read_text())
    self.kind = meta['kind']
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    if self.kind == 'byte':
      self.vocab_size = 259
    elif self.kind == 'char':
      self.chars = json.loads((directory / meta['file']).read_text())
      self.index = {c: i + 4 for i, c in enumerate(self.chars)}
      self.strings = ['', '', '', '\ufffd'] + self.chars
      self.vocab_size = 4 + len(self.chars)
    elif self.kind == 'sentencepiece':
      try:
        import sentencepiece
      except ImportError as e:
        raise ArtifactError('this artifact uses a SentencePiece tokenizer: pip install '
                            'sentencepiece (or pass token ids with --prompt_ids)') from e
      self.sp = sentencepiece.SentencePieceProcessor(
          model_proto=(directory / meta['file']).read_bytes())
      self.space_ids = [self.sp.piece_to_id(f'<0x{b:02X}>') for b in SPACE_MARK.encode()]
      self.vocab_size = self.sp.get_piece_size()
    elif self.kind == 'hf':
      try:
        import tokenizers
      except ImportError as e:
        raise ArtifactError('this artifact uses a Hugging Face tokenizer: pip install '
                            'tokenizers (or pass token ids with --prompt_ids)') from e
      self.hf = tokenizers.Tokenizer.from_str((directory / meta['file']).read_text('utf-8'))
      self.pad_id, self.bos_id, self.eos_id = meta['pad_id'], meta['bos_id'], meta['eos_id']
      self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
    else:
      raise ArtifactError(f'{meta_path}: unknown tokenizer kind {self.kind!r}')

  def encode(self, text: str) -> list[int]:
    if self.kind == 'byte':
      return [b + 3 for b in text.encode('utf-8')]
    if self.kind == 'char':
      return [self.index.get(c, 3) for c in text]
    if self.kind == 'hf':
      return self.hf.encode(text, add_special_tokens=False).ids
    ids: list[int] = []
    for k, part in enumerate(text.split(SPACE_MARK)):
      if k:
        ids.extend(self.space_ids)
      ids.extend(self.sp.encode(part))
    return ids

  def decode(self, ids) -> str:
    if self.kind == 'hf':
      return self.hf.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size],
                            skip_special_tokens=True)
    special = (self.pad_id, self.bos_id, self.eos_id)
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in special]
    if self.kind == 'byte':
      return bytes(i - 3 for i in ids).decode('utf-8', errors='replace')
    if self.kind == 'char':
      return ''.join(self.strings[i] for i in ids)
    return self.sp.decode(ids)


# ---- the artifact ------------------------------------------------------------------------------


class Artifact:
  """The exported prefill/step functions with their weights placed on the device once."""

  def __init__(self, directory: str | pathlib.Path = HERE):
    self.dir = pathlib.Path(directory)
    manifest_path = self.dir / 'artifact.json'
    if not manifest_path.is_file():
      raise ArtifactError(f'{manifest_path} not found: is {self.dir} an artifact written by '
                          'python -m lm.export?')
    self.manifest = m = json.loads(manifest_path.read_text())
    files = m['files']
    self.cache_len, self.batch_size = m['cache_len'], m['batch_size']
    self.vocab_size, self.bucket = m['vocab_size'], m['prefill_bucket']
    try:
      self._prefill = export.deserialize(bytearray((self.dir / files['prefill']).read_bytes()))
      self._step = export.deserialize(bytearray((self.dir / files['step']).read_bytes()))
      npz = np.load(self.dir / files['weights'])
      weights = [npz[w['name']] for w in m['weights']]
    except (OSError, KeyError) as e:
      raise ArtifactError(f'{self.dir}: cannot read the artifact ({e})') from e
    self.weights = [jax.device_put(w) for w in weights]
    self.prefill = jax.jit(self._prefill.call)
    self.step = jax.jit(self._step.call)
    self._tokenizer = None

  @property
  def tokenizer(self) -> Tokenizer:
    if self._tokenizer is None:
      self._tokenizer = Tokenizer(self.dir / self.manifest['files']['tokenizer'])
    return self._tokenizer

  def generate(self, prompts, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """Each prompt's continuation (token ids), max_new_tokens of them."""
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts or any(not p for p in prompts):
      raise ArtifactError('every prompt needs at least one token')
    if any(min(p) < 0 or max(p) >= self.vocab_size for p in prompts):
      raise ArtifactError(f'prompt token ids must lie in [0, {self.vocab_size})')
    if max_new_tokens < 1:
      raise ArtifactError(f'max_new_tokens={max_new_tokens} must be >= 1')
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
      raise ArtifactError('need temperature >= 0, top_k >= 0 and 0 < top_p <= 1')
    b, longest = len(prompts), max(map(len, prompts))
    if self.batch_size and b != self.batch_size:
      raise ArtifactError(f'this artifact was exported for batch size {self.batch_size}; '
                          f'give exactly that many prompts (got {b})')
    if longest + max_new_tokens > self.cache_len:
      raise ArtifactError(f'prompt length {longest} + max_new_tokens {max_new_tokens} exceeds '
                          f'the exported cache length {self.cache_len}')
    padded = min(self.cache_len, -(-longest // self.bucket) * self.bucket)
    tokens_BP = np.zeros((b, padded), np.int32)
    for i, p in enumerate(prompts):
      tokens_BP[i, :len(p)] = p
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    knobs = (np.float32(temperature), np.int32(top_k), np.float32(top_p))
    key = jax.random.key(seed, impl=self.manifest['prng_impl'])

    def key_data(n):
      return jax.random.key_data(jax.random.fold_in(key, n))

    token_B, _, k, v = self.prefill(self.weights, tokens_BP, lengths_B, key_data(0), *knobs)
    positions_B = jnp.asarray(lengths_B)
    out = [np.asarray(token_B)]
    for n in range(1, max_new_tokens):
      token_B, _, k, v = self.step(self.weights, token_B, positions_B, k, v, key_data(n), *knobs)
      positions_B = positions_B + 1
      out.append(np.asarray(token_B))
    return np.stack(out, axis=1).tolist()

  def generate_text(self, prompts: list[str], **kwargs) -> list[str]:
    """Text in, continuation text out (same keywords as `generate`)."""
    ids = [self.tokenizer.encode(p) or [self.tokenizer.bos_id] for p in prompts]
    return [self.tokenizer.decode(row) for row in self.generate(ids, **kwargs)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--artifact', default=str(HERE),
                      help='Artifact directory (default: the one holding this file).')
  parser.add_argument('--prompt', action='append', default=[],
                      help='Prompt text; repeat for a batch.')
  parser.add_argument('--prompt_ids', action='append', default=[],
                      help='A prompt as comma-separated token ids; repeat for a batch.')
  parser.add_argument('--max_new_tokens', type=int, default=50, help='Tokens to generate.')
  parser.add_argument('--temperature', type=float, default=0.8, help='0 = greedy.')
  parser.add_argument('--top_k', type=int, default=0, help='0 = no top-k filter.')
  parser.add_argument('--top_p', type=float, default=1.0, help='1 = no nucleus filter.')
  parser.add_argument('--seed', type=int, default=0, help='Same seed, same tokens.')
  parser.add_argument('--json', action='store_true',
                      help='Print {"tokens": [...], "texts": [...]} instead of plain text.')
  args = parser.parse_args(argv)
  try:
    if bool(args.prompt) == bool(args.prompt_ids):
      raise ArtifactError('give prompts with --prompt=TEXT or --prompt_ids=1,2,3 (not both)')
    art = Artifact(args.artifact)
    knobs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.prompt_ids:
      try:
        ids = [[int(t) for t in p.split(',') if t.strip()] for p in args.prompt_ids]
      except ValueError as e:
        raise ArtifactError(f'--prompt_ids must be comma-separated integers ({e})') from e
      tokens = art.generate(ids, **knobs)
      texts = None
    else:
      ids = [art.tokenizer.encode(p) or [art.tokenizer.bos_id] for p in args.prompt]
      tokens = art.generate(ids, **knobs)
      texts = [art.tokenizer.decode(row) for row in tokens]
  except ArtifactError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps({'tokens': tokens, 'texts': texts}))
  elif texts is None:
    for row in tokens:
      print(' '.join(map(str, row)))
  else:
    for i, (prompt, text) in enumerate(zip(args.prompt, texts, strict=True)):
      if len(texts) > 1:
        print(f'---- prompt {i + 1} ----')
      print(prompt + text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
