"""lm: a JAX/Flax language-model framework, from raw text to a served model."""

from setuptools import find_packages, setup

setup(
    name='lm',
    version='0.1.0',
    description='Train, evaluate and serve language models with JAX and Flax NNX.',
    python_requires='>=3.11',
    packages=find_packages(include=['lm', 'lm.*', 'configs', 'configs.*']),
    install_requires=[
        'jax>=0.6',
        'flax>=0.11',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'sentencepiece>=0.2',
        'tensorflow-datasets>=4.9.8',
        'grain>=0.2.10',
        'array-record>=0.7',
        'ml-collections>=1.0',
        'absl-py>=2.0',
        'numpy>=1.26',
        'tqdm>=4.66',
        'tensorboardX>=2.6',
        'matplotlib>=3.8',
        'sacrebleu>=2.4',
        'rouge-score>=0.1.2',
        'fastapi>=0.110',
        'uvicorn>=0.29',
        'prometheus-client>=0.20',
        'safetensors>=0.4.3',  # lm.convert: Hugging Face weights (numpy, bf16 via ml_dtypes)
        'tokenizers>=0.15',  # data.tokenizer.kind='hf'
        'jinja2>=3.1.6',  # lm.serve: Hugging Face chat templates (sandboxed; 3.1.6 fixes escapes)
        'flatbuffers>=24.3',  # jax.export serialization (python -m lm.export)
        'gcsfs>=2024.2',  # gs:// workdirs (etils.epath reads and writes them through it)
        # python -m lm clean (lm/data/clean): the engine and its stages, language id with
        # its model in the wheel, WARC reading and HTML extraction, Unicode repair, .zst
        'datatrove>=0.10', 'orjson>=3.9', 'py3langid>=0.4', 'warcio>=1.7', 'trafilatura>=1.12',
        'ftfy>=6.2', 'zstandard>=0.22', 'xxhash>=3.4', 'pyarrow>=14',
        'lxml_html_clean>=0.1',  # trafilatura (justext) imports lxml.html.clean, no longer in lxml
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'ruff>=0.6',
                 # tests/test_notebook.py executes experiments/quickstart.ipynb in a kernel
                 'nbclient>=0.10', 'nbformat>=5.9', 'ipykernel>=6.29',
                 # tests/test_evaluate.py runs the lm-eval adapter
                 'lm-eval>=0.4.13',
                 # tests/unit/serve/test_openai.py: lm-eval's API models (lm-eval[api])
                 'tenacity>=8', 'aiohttp>=3.9',
                 # tests/test_serve.py: FastAPI's TestClient
                 'httpx>=0.27',
                 # tests/unit/serve/test_openai.py: the official client against the server
                 'openai>=1.40',
                 # tests/test_train.py: a gs:// workdir against a local in-memory GCS
                 'gcp-storage-emulator>=2024.8',
                 # tests/test_convert.py checks lm.convert against transformers on torch
                 'transformers>=4.40', 'torch>=2.1'],
        'eval': ['lm-eval>=0.4.13'],
    },
)
