"""Evaluation: perplexity, generation (BLEU/ROUGE), classification metrics, lm-eval adapter.

`python -m lm.evaluate` is the command line; the pieces are importable on their own:
metrics (pure numpy + sacrebleu/rouge-score), scoring.Scorer (log-likelihoods),
generation.Generator, classification.ZeroShotLabels, perplexity.perplexity, and
harness.LmJax (needs lm-eval, the `eval` extra).
"""
