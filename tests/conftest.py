import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Small, fast settings shared by the end-to-end tests.
FAST = {
    "epochs": 1,
    "neg_num": 32,
    "train_batch_size": 4096,
    "eval_batch_size": 409600,
    "embedding_size": 16,
    "show_progress": False,
    "state": "ERROR",
    "metrics": ["Recall", "NDCG"],
    "topk": [20],
    "valid_metric": "NDCG@20",
    "gpu_id": "",
    "learning_rate": 0.01,
}


@pytest.fixture
def fast_config(tmp_path):
    return dict(FAST, checkpoint_dir=str(tmp_path / "saved"))


@pytest.fixture(scope="session")
def _session_cwd(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(autouse=True)
def _no_cwd_litter(_session_cwd, monkeypatch):
    # RecBole writes log/ and log_tensorboard/ into the working directory; TensorBoard writers
    # flush from a thread after a test ends, so the folder lives as long as the session.
    monkeypatch.chdir(_session_cwd)
