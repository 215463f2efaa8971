"""HTTP serving: `python -m lm serve --workdir=DIR`, an OpenAI-style completions API.

protocol.py  request validation and response JSON (no jax)
batcher.py   the scheduler thread: concurrent requests share one `Decoder` batch
metrics.py   Prometheus metrics
app.py       the FastAPI routes
server.py    a loaded run (lm.run.load_run) behind the app, the socket, uvicorn
bench.py     `python -m lm.serve.bench`: a load generator for a running server (an HTTP
             client only: it imports nothing of lm, so it runs from any machine)
__main__.py  shim: `python -m lm.serve` is lm/cli/serve.py
"""
