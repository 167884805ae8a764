import itertools
import os
import sys
import time

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


# ----------------------------------------------------------------------------------------------
# No Ray process outlives the test that started it, nor the test run.
#
# Every process started during this run inherits RAY_RUN_ENV, and every process a test starts
# inherits that test's RAY_TEST_ENV too (Ray's raylet passes its environment on to the agent and
# the workers it starts, a CLI subprocess gets os.environ): so a Ray process is attributed to the
# test that started it even while other people's Ray sessions come and go on the same machine.
# Ray's processes are listed from /proc (recbole_dsl/tune/processes.py: raylet, gcs_server,
# dashboard, dashboard agent, log_monitor, monitor, runtime_env agent, workers as ray::...).

RAY_RUN_ENV = "RECBOLE_DSL_TEST_RUN"
RAY_TEST_ENV = "RECBOLE_DSL_TEST"
RAY_GRACE_S = 5.0  # ray.shutdown() leaves the raylet's children to exit on their own, a few seconds later
os.environ[RAY_RUN_ENV] = f"{os.getpid()}-{time.time_ns()}"
_test_numbers = itertools.count()


def ray_processes_of(env: str, before=(), prefix: bool = False, grace: float = RAY_GRACE_S):
    """The Ray processes whose environment holds `env` ('NAME=VALUE'; with prefix, its start) and
    that are not in `before` (RayProcess objects), still alive after up to `grace` seconds."""
    from recbole_dsl.tune.processes import ray_processes, wait_gone

    known = {(p.pid, p.start) for p in before}
    new = [p for p in ray_processes(env=env, env_prefix=prefix) if (p.pid, p.start) not in known]
    return wait_gone(new, grace)


def _stop_and_describe(left) -> str:
    """Stop the leftover processes (by pid, each checked to be the same process) and say what they were."""
    from recbole_dsl.tune.processes import stop

    stop(left, grace=0)
    return "\n  ".join(map(str, left))


@pytest.fixture(autouse=True)
def no_ray_process_left(monkeypatch):
    """Fails the test if a Ray process it started is still running a few seconds after it ended
    (the process is then stopped, so that the next test starts clean). Yields this test's
    'NAME=VALUE' environment entry, which every process the test starts carries."""
    from recbole_dsl.tune.processes import ray_processes

    token = f"{os.environ[RAY_RUN_ENV]}-{next(_test_numbers)}"
    monkeypatch.setenv(RAY_TEST_ENV, token)
    before = ray_processes()
    yield f"{RAY_TEST_ENV}={token}"
    left = ray_processes_of(f"{RAY_TEST_ENV}={token}", before)
    if left:
        pytest.fail(f"Ray processes started by this test still run {RAY_GRACE_S:.0f} s after it:\n  "
                    + _stop_and_describe(left), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """The run ends with no Ray process it started (a session fixture's or collection's too)."""
    left = ray_processes_of(f"{RAY_RUN_ENV}={os.environ[RAY_RUN_ENV]}")
    if left:
        sys.stderr.write("\nRay processes started by this test run were still running at its end:\n  "
                         + _stop_and_describe(left) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
