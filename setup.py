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
        'flatbuffers>=24.3',  # jax.export serialization (python -m lm.export)
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'ruff>=0.6'],
    },
)
