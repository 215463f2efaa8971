"""Other ecosystems' formats: Hugging Face models in and out (hf_mapping, hf)."""
