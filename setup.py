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
        'safetensors>=0.4.3',  # lm.convert: Hugging Face weights (numpy, bf16 via ml_dtypes)
        'tokenizers>=0.15',  # data.tokenizer.kind='hf'
    ],
    extras_require={
        # transformers + torch: tests/test_convert.py checks lm.convert against them.
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'ruff>=0.6', 'transformers>=4.40',
                 'torch>=2.1'],
    },
)
