"""HTTP serving: `python -m lm.serve --workdir=DIR`, an OpenAI-style completions API.

protocol.py  request validation and response JSON (no jax)
batcher.py   the scheduler thread: concurrent requests share one `Decoder` batch
metrics.py   Prometheus metrics
app.py       the FastAPI routes
__main__.py  flags, loading the workdir, uvicorn
bench.py     `python -m lm.serve.bench`: a load generator for a running server
"""
