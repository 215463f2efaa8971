"""clean(cfg): raw files -> cleaned, deduplicated, decontaminated TFDS ArrayRecord documents.

Runs as datatrove executors, one after another (each over `clean.tasks` shards, with
`clean.workers` processes; LocalPipelineExecutor here, the same steps on Slurm or Ray in
docs/data.md):

  1 filter     read -> normalize -> language id -> language, Gopher repetition, Gopher
               quality, C4 (prose only) -> decontaminate -> PII -> work/filtered/ (+ exact
               dedup signatures)
  2 exact      exact-duplicate groups (1 task)
  3 dedup      drop exact duplicates -> work/exact/ (+ MinHash signatures)
  4 buckets    MinHash LSH: candidate pairs per band (one task per band)
  5 clusters   union-find of the pairs (1 task); every cluster keeps one member
  6 final      drop the others -> work/final/
  7-9 lines    only with clean.line_dedup.enabled (lm/data/clean/linededup.py): 7 counts
               per shard the documents holding each line (or paragraph), 8 (1 task) finds
               those in >= min_docs documents, 9 removes them from every prose document
               -> work/lines/
  then         the last stage's shards, streamed, become <output>/documents (the prepared store
               `data.source='cleaned'` reads), and <output>/report/ is written

Every removed document is kept under <output>/removed/<stage>/ with its reason. A task
records its completion (work/logs/<stage>/completions/); a rerun after a crash skips the
finished tasks of every stage, and a finished output (meta.json) is not rebuilt. The
output depends on the config and the input, never on `workers`.
"""

import json
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import exact_dedup, minhash
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig

from lm.data import cache, sources, split, store
from lm.data.clean import decont, linededup, readers, report, steps
from lm.data.clean.config import Clean, CleanError, as_dict, config_hash

FORMAT = 1
Log = Callable[[str], None]
STAGES = report.STAGES


def _writer(folder: pathlib.Path) -> JsonlWriter:
  return JsonlWriter(str(folder), output_filename='${rank}.jsonl', compression=None)


class RemovedWriter(JsonlWriter):
  """Keeps removed documents (with metadata filter_reason; `reason` where the step that
  removed them gives none, as the dedup filters do)."""

  def __init__(self, folder: pathlib.Path, reason: str):
    super().__init__(str(folder), output_filename='${rank}.jsonl', compression=None)
    self.reason = reason

  def write(self, document: Document, rank: int = 0, **kwargs: Any) -> None:
    document.metadata.setdefault('filter_reason', self.reason)
    super().write(document, rank=rank, **kwargs)


def _removed(paths: 'Paths', stage: str, reason: str) -> RemovedWriter:
  return RemovedWriter(paths.removed / stage, reason)


def exact_key(doc: Document) -> str:
  """What exact dedup compares: the text lower-cased with whitespace runs as one space."""
  return linededup.key(doc.text)  # the normalisation line dedup compares units by


class ShardReader(PipelineStep):
  """Task `rank` reads <folder>/<rank>.jsonl (datatrove's JsonlWriter format) in order; a
  shard left empty by an earlier stage has no file and yields nothing."""

  type = '📖 - READER'
  name = '📖 shard'

  def __init__(self, folder: pathlib.Path):
    super().__init__()
    self.folder = str(folder)

  def run(self, data: DocumentsPipeline = None, rank: int = 0,
          world_size: int = 1) -> DocumentsPipeline:
    yield from read_shard(pathlib.Path(self.folder), rank)


def read_shard(folder: pathlib.Path, rank: int) -> Iterator[Document]:
  path = folder / f'{rank:05d}.jsonl'
  if not path.exists():
    return
  with open(path, encoding='utf-8') as f:
    for line in f:
      r = json.loads(line)
      yield Document(text=r['text'], id=r['id'], metadata=r.get('metadata') or {})


class Paths:
  """The output directory's layout."""

  def __init__(self, output: str):
    self.root = pathlib.Path(output).expanduser().absolute()
    self.work = self.root / 'work'
    self.removed = self.root / 'removed'
    self.documents = self.root / 'documents'
    self.report = self.root / 'report'
    self.meta = self.root / 'meta.json'

  def logs(self, stage: str) -> str:
    return str(self.work / 'logs' / stage)

  def kept(self, cfg: Clean) -> pathlib.Path:
    """The shards of the last stage: the documents that are published."""
    return self.work / ('lines' if cfg.line_dedup.enabled else 'final')


def _filters(cfg: Clean, paths: Paths, words: steps.RegexWords) -> list[PipelineStep]:
  out = lambda name: _removed(paths, name, name)  # noqa: E731
  chain: list[PipelineStep] = [steps.Normalize(cfg.ftfy, exclusion_writer=out('normalize')),
                               steps.LanguageId()]
  if cfg.language.enabled:
    chain.append(steps.ProseOnly(steps.LanguageFilter(
        cfg.language.languages, cfg.language.min_score, exclusion_writer=out('language'))))
  if cfg.gopher_repetition.enabled:
    g = cfg.gopher_repetition
    chain.append(steps.ProseOnly(GopherRepetitionFilter(
        dup_line_frac=g.dup_line_frac, dup_para_frac=g.dup_para_frac,
        dup_line_char_frac=g.dup_line_char_frac, dup_para_char_frac=g.dup_para_char_frac,
        top_n_grams=tuple(tuple(x) for x in g.top_n_grams),
        dup_n_grams=tuple(tuple(x) for x in g.dup_n_grams),
        exclusion_writer=out('gopher_repetition'), language=words)))
  if cfg.gopher_quality.enabled:
    g = cfg.gopher_quality
    chain.append(steps.ProseOnly(GopherQualityFilter(
        min_doc_words=g.min_doc_words, max_doc_words=g.max_doc_words,
        min_avg_word_length=g.min_avg_word_length, max_avg_word_length=g.max_avg_word_length,
        max_symbol_word_ratio=g.max_symbol_word_ratio,
        max_bullet_lines_ratio=g.max_bullet_lines_ratio,
        max_ellipsis_lines_ratio=g.max_ellipsis_lines_ratio,
        max_non_alpha_words_ratio=g.max_non_alpha_words_ratio,
        min_stop_words=g.min_stop_words, exclusion_writer=out('gopher_quality'),
        language=words)))
  if cfg.c4.enabled:
    c = cfg.c4
    chain.append(steps.ProseOnly(C4QualityFilter(
        split_paragraph=c.split_paragraph, remove_citations=c.remove_citations,
        filter_no_terminal_punct=c.filter_no_terminal_punct,
        min_num_sentences=c.min_num_sentences, min_words_per_line=c.min_words_per_line,
        max_word_length=c.max_word_length, filter_lorem_ipsum=c.filter_lorem_ipsum,
        filter_javascript=c.filter_javascript, filter_curly_bracket=c.filter_curly_bracket,
        filter_policy=c.filter_policy, exclusion_writer=out('c4'), language=words)))
  if cfg.decontaminate.paths:
    index = decont.build_index(cfg.decontaminate.paths, cfg.decontaminate.n_grams,
                               cfg.decontaminate.min_words)
    chain.append(decont.Decontaminate(index, exclusion_writer=out('decontaminate')))
  p = cfg.pii
  chain.append(steps.Pii(p.emails, p.ips, p.phones, p.secrets))
  return chain


def _stages(cfg: Clean, files: list[tuple[str, str]],
            paths: Paths) -> list[tuple[str, list[PipelineStep], int]]:
  """(name, pipeline, tasks) of every datatrove stage, in order."""
  words = steps.RegexWords()
  w, tasks = paths.work, cfg.tasks
  # sha1: datatrove's xxhash path hands str to xxhash, which xxhash >= 4 refuses.
  hashing = HashConfig(precision=64, hash_fc='sha1')
  edc = exact_dedup.ExactDedupConfig(content_getter=exact_key, hash_config=hashing,
                                     only_dedup_in_index=False)  # (True: against an index)
  mhc = minhash.MinhashConfig(n_grams=cfg.minhash.n_grams, num_buckets=cfg.minhash.num_buckets,
                              hashes_per_bucket=cfg.minhash.hashes_per_bucket,
                              seed=cfg.minhash.seed, hash_config=hashing)
  first = [readers.FileReader(files, cfg.text_key, cfg.code_suffixes, cfg.id_key),
           *_filters(cfg, paths, words), _writer(w / 'filtered')]
  if cfg.exact_dedup:
    first.append(exact_dedup.ExactDedupSignature(str(w / 'exact_sigs'), edc))
  stages = [('1_filter', first, tasks)]
  second: list[PipelineStep] = [ShardReader(w / 'filtered')]
  if cfg.exact_dedup:
    stages.append(('2_exact', [exact_dedup.ExactFindDedups(
        str(w / 'exact_sigs'), str(w / 'exact_dups'), edc, save_cluster_size=True)], 1))
    second.append(exact_dedup.ExactDedupFilter(str(w / 'exact_dups'), edc,
                                               exclusion_writer=_removed(paths, 'exact_dedup',
                                                                         'exact_duplicate')))
  second.append(_writer(w / 'exact'))
  if cfg.minhash.enabled:
    second.append(minhash.MinhashDedupSignature(str(w / 'mh_sigs'), mhc, language=words))
  stages.append(('3_dedup', second, tasks))
  final: list[PipelineStep] = [ShardReader(w / 'exact')]
  if cfg.minhash.enabled:
    stages.append(('4_buckets', [minhash.MinhashDedupBuckets(
        str(w / 'mh_sigs'), str(w / 'mh_buckets'), config=mhc)], cfg.minhash.num_buckets))
    stages.append(('5_clusters', [minhash.MinhashDedupCluster(
        str(w / 'mh_buckets'), str(w / 'mh_clusters'), config=mhc, save_cluster_size=True)], 1))
    final.append(minhash.MinhashDedupFilter(
        str(w / 'mh_clusters'), exclusion_writer=_removed(paths, 'minhash', 'near_duplicate'),
        load_cluster_sizes=True))
  final.append(_writer(w / 'final'))
  stages.append(('6_final', final, tasks))
  if cfg.line_dedup.enabled:
    stages += _line_stages(cfg, paths)
  return stages


def _line_stages(cfg: Clean, paths: Paths) -> list[tuple[str, list[PipelineStep], int]]:
  """Line/paragraph boilerplate removal over work/final (lm/data/clean/linededup.py)."""
  w, ld = paths.work, cfg.line_dedup
  boilerplate = w / 'line_boilerplate.npy'
  return [
      ('7_line_counts', [ShardReader(w / 'final'),
                         linededup.LineCounts(w / 'line_counts', ld.unit, ld.min_chars)],
       cfg.tasks),
      ('8_line_merge', [linededup.LineMerge(w / 'line_counts', boilerplate, cfg.tasks,
                                            ld.min_docs)], 1),
      ('9_line_filter', [ShardReader(w / 'final'), linededup.LineFilter(
          boilerplate, w / 'line_stats', ld.unit, ld.min_chars,
          exclusion_writer=_removed(paths, 'line_dedup', linededup.REMOVED_REASON)),
                         _writer(w / 'lines')], cfg.tasks)]


def identity(cfg: Clean, files: list[tuple[str, str]]) -> dict[str, Any]:
  return {'format': FORMAT, 'config_hash': config_hash(cfg),
          'input_fingerprint': readers.fingerprint(files), 'input': cfg.input,
          'input_files': len(files)}


def clean(cfg: Clean, log: Log = print) -> dict[str, Any]:
  """Runs (or resumes, or reuses) the pipeline; returns the output's meta.json."""
  paths = Paths(cfg.output)
  files = readers.list_inputs(cfg.input, cfg.suffixes)
  ident = identity(cfg, files)
  if paths.meta.exists():
    meta = cache.read_json(paths.meta)
    if meta['identity'] == ident:
      log(f'[clean] {paths.root} is already cleaned (config {ident["config_hash"]}, input '
          f'{ident["input_fingerprint"]}); nothing to do')
      return meta
    raise CleanError(f'clean.output={str(paths.root)!r} holds a dataset cleaned with another '
                     'config or input; give a new clean.output or delete that directory')
  paths.work.mkdir(parents=True, exist_ok=True)
  started = paths.work / 'identity.json'
  if started.exists() and cache.read_json(started) != ident:
    raise CleanError(f'clean.output={str(paths.root)!r} holds an unfinished run of another '
                     'config or input; give a new clean.output or delete that directory')
  cache.write_json(started, ident)
  tasks = min(cfg.tasks, len(files))
  cfg_run = cfg if tasks == cfg.tasks else _with_tasks(cfg, tasks)
  input_bytes = readers.input_bytes(files)
  log(f'[clean] {len(files)} input files ({input_bytes / 1e6:.1f} MB) in {tasks} shards, '
      f'{cfg.workers} workers -> {paths.root}')
  start = time.perf_counter()
  timings = run_stages(_stages(cfg_run, files, paths), cfg.workers, paths, log)
  counts = publish(cfg_run, paths, log)
  seconds = time.perf_counter() - start
  meta = {'identity': ident, 'config': as_dict(cfg), 'stats': counts.pop('stats'),
          'counts': counts, 'timings_s': timings,
          'seconds': round(seconds, 3), 'input_bytes': input_bytes,
          'docs_per_s': round(counts['input_docs'] / seconds, 1),
          'mb_per_s': round(input_bytes / 1e6 / seconds, 3)}
  report.write(cfg_run, paths, meta, log)
  cache.write_json(paths.meta, meta)  # last: a directory with meta.json is complete
  log(f'[clean] done in {seconds:.1f}s: {counts["input_docs"]} documents in, '
      f'{counts["kept_docs"]} kept ({meta["docs_per_s"]} docs/s, {meta["mb_per_s"]} MB/s); '
      f'report in {paths.report}')
  return meta


def run_stages(stages: list[tuple[str, list[PipelineStep], int]], workers: int, paths: Paths,
               log: Log) -> dict[str, float]:
  """Runs each (name, steps, tasks) on LocalPipelineExecutor, skipping finished tasks;
  returns {name: seconds}."""
  timings = {}
  for name, pipeline, n in stages:
    t0 = time.perf_counter()
    # fork: workers inherit the imported modules (forkserver re-imports lm.data, TFDS and
    # Grain in every worker, seconds per stage); they run only the steps, no JAX.
    LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n),
                          logging_dir=paths.logs(name), start_method='fork').run()
    timings[name] = round(time.perf_counter() - t0, 3)
    log(f'[clean] stage {name}: {n} tasks in {timings[name]:.1f}s')
  return timings


def _with_tasks(cfg: Clean, tasks: int) -> Clean:
  import dataclasses
  return dataclasses.replace(cfg, tasks=tasks)


def final_documents(cfg: Clean, paths: Paths) -> Iterator[sources.Document]:
  """The cleaned documents, streamed in shard order."""
  for rank in range(cfg.tasks):
    for doc in read_shard(paths.kept(cfg), rank):
      yield sources.Document(doc.id, doc.text)


def publish(cfg: Clean, paths: Paths, log: Log) -> dict[str, Any]:
  """Splits the final shards by document hash (as data.split='document') and writes them as
  the TFDS store, streamed: only a number per document is held."""
  units, chars, nbytes = [], [], []
  for d in final_documents(cfg, paths):
    units.append(split.hash_unit(d.name))
    chars.append(len(d.text))
    nbytes.append(len(d.text.encode('utf-8')))
  if len(units) < 2:
    raise CleanError(f'clean.input={cfg.input!r}: {len(units)} documents survived cleaning; '
                     'at least 2 are needed (see the removed/ directory for why)')
  is_val = [u < cfg.val_fraction for u in units]
  if not any(is_val):
    is_val[units.index(min(units))] = True
  if all(is_val):
    is_val[units.index(max(units))] = False

  def docs_of(val: bool) -> Callable[[], Iterator[sources.Document]]:
    return lambda: (d for d, v in zip(final_documents(cfg, paths), is_val, strict=True)
                    if v == val)
  if paths.documents.exists():
    shutil.rmtree(paths.documents)  # an interrupted earlier publish
  t0 = time.perf_counter()
  with cache.atomic_dir(paths.documents) as tmp:
    store.write({'train': docs_of(False), 'validation': docs_of(True)}, tmp)
  stats: dict[str, Any] = {'replaced_bytes': 0}
  for name, val in (('train', False), ('validation', True)):
    pick = [i for i, v in enumerate(is_val) if v == val]
    stats[f'{name}_docs'] = len(pick)
    stats[f'{name}_chars'] = sum(chars[i] for i in pick)
    stats[f'{name}_bytes'] = sum(nbytes[i] for i in pick)
  log(f'[clean] wrote {len(units)} documents ({stats["train_docs"]} train, '
      f'{stats["validation_docs"]} validation) as TFDS ArrayRecord in '
      f'{time.perf_counter() - t0:.1f}s')
  removed = removed_counts(paths)
  return {'input_docs': len(units) + sum(removed.values()), 'kept_docs': len(units),
          'removed': removed, 'stats': stats}


def removed_counts(paths: Paths) -> dict[str, int]:
  """{stage: documents it removed}, from the removed/ shards."""
  out = {}
  for stage in STAGES:
    n = 0
    for f in sorted((paths.removed / stage).glob('*.jsonl')):
      with open(f, 'rb') as fh:
        n += sum(1 for _ in fh)
    out[stage] = n
  return out
