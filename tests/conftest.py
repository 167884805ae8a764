import sys

import pytest

from helpers import FAST, ROOT, write_slice

sys.path.insert(0, str(ROOT))


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


@pytest.fixture(scope="session")
def slice_root(tmp_path_factory):
    """data_path of the small ``ml-slice`` dataset (tests/helpers.py, write_slice), written once."""
    return write_slice(tmp_path_factory.mktemp("slice"))
