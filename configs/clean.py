"""The cleaning pipeline's config: `python -m lm clean --config=configs/clean.py`.

Every key is typed in lm/data/clean/config.py; override one with
`--config.clean.<key>=<value>`. Thresholds of the Gopher and C4 rules are datatrove's
defaults (the values of the Gopher and C4 papers). Documents whose name ends in one of
`code_suffixes` are code: they skip the prose filters (language, Gopher, C4) but go
through normalisation, PII, dedup and decontamination.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  k = c.clean = ml_collections.ConfigDict()
  k.input = 'stdlib'  # a file, directory (recursive) or glob; 'stdlib': the embedded corpus;
  # 'tfds:NAME[@SPLIT]' / 'hf:NAME[@SPLIT]': a TFDS / Hugging Face dataset (needs network)
  # files a directory input is searched for (each also as .gz / .zst)
  k.suffixes = ('.txt', '.md', '.jsonl', '.json', '.parquet', '.warc', '.py')
  k.text_key = 'text'  # JSONL field / Parquet column that holds the text
  k.id_key = ''  # JSONL field / Parquet column naming the document ('': file:line)
  k.code_suffixes = ('.py', '.c', '.h', '.cc', '.cpp', '.js', '.ts', '.go', '.rs', '.java',
                     '.sh')  # documents from such files are code (kind='code')
  k.output = ''  # the cleaned dataset's directory; data.source='cleaned', data.path=<this>
  k.tasks = 4  # input shards (datatrove tasks); fixed per dataset: changes the output order
  k.workers = 1  # processes running the tasks; the output is the same for any number
  k.val_fraction = 0.05  # validation documents, chosen by name hash (as data.split='document')
  k.ftfy = True  # repair mojibake with ftfy before NFC (False: NFC only)
  k.exact_dedup = True  # drop documents whose normalised text repeats an earlier one

  k.language = ml_collections.ConfigDict()
  k.language.enabled = True  # py3langid (model ships in the wheel); prose documents only
  k.language.languages = ('en',)  # keep these (ISO 639-1)
  k.language.min_score = 0.65  # and only with at least this probability

  k.gopher_quality = ml_collections.ConfigDict()  # Gopher quality rules (prose only)
  k.gopher_quality.enabled = True
  k.gopher_quality.min_doc_words = 50
  k.gopher_quality.max_doc_words = 100_000
  k.gopher_quality.min_avg_word_length = 3.0
  k.gopher_quality.max_avg_word_length = 10.0
  k.gopher_quality.max_symbol_word_ratio = 0.1  # '#' and '...' per word
  k.gopher_quality.max_bullet_lines_ratio = 0.9
  k.gopher_quality.max_ellipsis_lines_ratio = 0.3
  k.gopher_quality.max_non_alpha_words_ratio = 0.8  # at least 80% of words have a letter
  k.gopher_quality.min_stop_words = 2

  k.gopher_repetition = ml_collections.ConfigDict()  # Gopher repetition rules (prose only)
  k.gopher_repetition.enabled = True
  k.gopher_repetition.dup_line_frac = 0.3
  k.gopher_repetition.dup_para_frac = 0.3
  k.gopher_repetition.dup_line_char_frac = 0.2
  k.gopher_repetition.dup_para_char_frac = 0.2
  k.gopher_repetition.top_n_grams = ((2, 0.2), (3, 0.18), (4, 0.16))  # (n, max char frac)
  k.gopher_repetition.dup_n_grams = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                     (10, 0.10))

  k.c4 = ml_collections.ConfigDict()  # C4 rules (prose only); line rules edit, not drop
  k.c4.enabled = True
  k.c4.split_paragraph = True  # lines are split on newlines (False: on sentences)
  k.c4.remove_citations = True  # drop Wikipedia-style [1] citations
  k.c4.filter_no_terminal_punct = True  # drop lines without terminal punctuation
  k.c4.min_num_sentences = 5  # -1: off
  k.c4.min_words_per_line = 3  # -1: off
  k.c4.max_word_length = 1000  # -1: off
  k.c4.filter_lorem_ipsum = True
  k.c4.filter_javascript = True  # drop lines mentioning javascript
  k.c4.filter_curly_bracket = True  # drop documents with a '{'
  k.c4.filter_policy = True  # drop cookie/terms-of-use lines

  k.pii = ml_collections.ConfigDict()  # replaced with <EMAIL>, <IP_ADDRESS>, <PHONE>, <SECRET>
  k.pii.emails = True
  k.pii.ips = True  # public addresses only (127.0.0.1, 10.x stay)
  k.pii.phones = True
  k.pii.secrets = True  # AWS/GitHub/OpenAI/Slack/Google keys, PEM private keys, password='..'

  k.minhash = ml_collections.ConfigDict()  # near-duplicates; clusters keep one member
  k.minhash.enabled = True
  k.minhash.n_grams = 5  # word shingles
  # LSH bands b x rows r: a pair of Jaccard J is a candidate with probability
  # 1 - (1 - J^r)^b: 25 x 6 gives 0.9995 at J=0.8, 0.69 at 0.6, 0.33 at 0.5 (threshold
  # ~(1/b)^(1/r) = 0.59). FineWeb's 14 x 8 gives 0.92 at J=0.8; 20 x 7 (0.99 in theory)
  # missed 2 of 33 planted pairs at J=0.80 in tests/unit/data/test_clean.py.
  k.minhash.num_buckets = 25
  k.minhash.hashes_per_bucket = 6
  k.minhash.seed = 1

  k.decontaminate = ml_collections.ConfigDict()
  k.decontaminate.paths = ()  # evaluation JSONL files: documents sharing an n-gram are removed
  k.decontaminate.n_grams = 13  # word n-gram length (GPT-3's 13-gram overlap)
  k.decontaminate.min_words = 8  # eval records with fewer words are ignored

  # Boilerplate removal (after near-dedup, prose only): a line or paragraph found in at least
  # min_docs documents is removed from every document holding it; a document left blank
  # is removed (removed/line_dedup/).
  k.line_dedup = ml_collections.ConfigDict()
  k.line_dedup.enabled = False
  k.line_dedup.unit = 'line'  # 'line' | 'paragraph' (text between blank lines)
  k.line_dedup.min_docs = 5  # a unit in at least this many distinct documents is boilerplate
  k.line_dedup.min_chars = 20  # shorter units (compared stripped, lower-cased) are kept

  k.examples_per_reason = 3  # example documents per removal reason in the report
  k.figures = True  # PNG histograms in the report (matplotlib)
  return c
