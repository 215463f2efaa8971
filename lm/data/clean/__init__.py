"""The cleaning pipeline: raw collections -> the prepared dataset the trainer reads.

config.py (the typed `clean` config), readers.py (inputs), steps.py and decont.py (our
datatrove steps), pipeline.py (the stages on datatrove's executors), report.py.
"""
