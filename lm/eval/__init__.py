"""Evaluation: perplexity, generation (BLEU/ROUGE), classification metrics, lm-eval adapter.

`python -m lm evaluate` (lm/cli/evaluate.py) is the command line and tasks.evaluate its one
library call; the pieces are importable on their own: metrics (pure numpy + sacrebleu/
rouge-score), losses (next-token loss sums), perplexity.perplexity, scoring.Scorer
(log-likelihoods), generation.Generator, classification.ZeroShotLabels / HeadLabels,
quantize.compare_perplexity (float vs int8), report (eval/<name>.json and .md) and
harness.LmJax (needs lm-eval, the `eval` extra). Runs come from lm.run.load_run.
"""
