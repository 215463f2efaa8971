"""Other ecosystems\x27 formats: Hugging Face models in and out (hf, hf_mapping)."""
