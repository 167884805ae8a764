"""Ray Tune search (recbole_dsl.tune): spaces checked up front, trials isolated, results a user can act on.

End-to-end tests run on a slice of ml-100k (its first users) with tiny models, and always shut
Ray down (local Ray via ray.shutdown; the two-node cluster by the ids of the processes it started).
No Ray process outlives a search: run_tune (and so the CLI) returns only once every process of the
local Ray it started has exited (checked right after each search below), and conftest.py fails any
test whose Ray processes are still there a few seconds after it.
"""
import csv
import dataclasses
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from recbole_dsl.errors import ConfigError
from recbole_dsl.tune import TuneOptions, load_space, run_tune
from recbole_dsl.tune import processes as rproc
from recbole_dsl.tune import report as rpt
from recbole_dsl.tune.runner import _build_setup
from recbole_dsl.tune.space import SAMPLERS, parse_space

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "run_recbole_dsl.py")]
SPACES = sorted((ROOT / "properties" / "tune").glob("*.yaml"))

# Small, fast trials: the slice dataset, 16-dim MF, 16 negatives.
TRIAL = {
    "dataset": "ml-slice",
    "epochs": 2,
    "embedding_size": 16,
    "neg_num": 16,
    "train_batch_size": 4096,
    "eval_batch_size": 409600,
    "learning_rate": 0.01,
    "gpu_id": "",
    "state": "ERROR",
}


def cli_args(data_path, **over):
    cfg = dict(TRIAL, data_path=str(data_path), **over)
    return [f"--{k}={v}" for k, v in cfg.items()]


# A search on the slice takes under a minute alone; on a loaded 2-core machine (three other
# processes) the three-trial grid took over 300 s, so the bound is generous (pytest-timeout is 900).
def run_cli(*args, env=None, timeout=600):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, env=e,
                          stdin=subprocess.DEVNULL)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _processes_of(folder):
    """Live processes of the Ray sessions kept in `folder`: Ray's own processes name it on their
    command line, its workers (renamed ray::...) write their output there."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            outputs = [os.readlink(d / "fd" / fd) for fd in ("1", "2") if (d / "fd" / fd).exists()]
        except OSError:
            continue
        if folder.encode() in cmdline or any(o.startswith(folder + os.sep) for o in outputs):
            pids.append(int(d.name))
    return pids


@pytest.fixture
def ray_tmp():
    """A short per-test Ray session folder (Unix socket paths must stay short). Every Ray process
    the test starts belongs to a session in it, so none may outlive the test: the ones still
    there after a grace period are killed (by id) and fail the test."""
    import shutil

    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield d
    deadline = time.time() + 30
    while _processes_of(d) and time.time() < deadline:
        time.sleep(0.2)
    left = _processes_of(d)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(d, ignore_errors=True)
    if left:
        pytest.fail(f"the test left Ray processes running: {left}")


def assert_no_ray_process(env):
    """No Ray process carrying `env` (a test's entry, see conftest.py) runs now: no grace period,
    run_tune's own clean-up must be over when it returns."""
    left = rproc.ray_processes(env=env)
    assert not left, "Ray processes outlived the search:\n" + "\n".join(map(str, left))


@pytest.fixture
def no_ray_left():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()
        pytest.fail("a test left Ray running")


# ----------------------------------------------------------------------------------------------
# the space: Ray Tune's vocabulary in YAML


def test_space_vocabulary_becomes_ray_domains(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    f = tmp_path / "s.yaml"
    f.write_text(
        "rec_loss: SL\n"
        "loss_tau: {grid_search: [0.05, 0.1]}\n"
        "learning_rate: {loguniform: [1e-4, 1e-2]}\n"
        "neg_num: {choice: [16, 32]}\n"
        "embedding_size: {randint: {lower: 8, upper: 33}}\n"
        "weight_decay: {quniform: [0.0, 0.1, 0.01]}\n"
        "tune_options: {search_alg: random, num_samples: 3}\n"
    )
    sp = load_space(f)
    assert sp.constants() == {"rec_loss": "SL"}
    assert sp.searched() == ["loss_tau", "learning_rate", "neg_num", "embedding_size", "weight_decay"]
    assert sp.options == {"search_alg": "random", "num_samples": 3}
    ps = sp.param_space()
    assert ps["loss_tau"] == {"grid_search": [0.05, 0.1]}
    assert isinstance(ps["learning_rate"], Float) and ps["learning_rate"].lower == 1e-4  # 1e-4 read as a float
    assert isinstance(ps["neg_num"], Categorical) and ps["neg_num"].categories == [16, 32]
    assert isinstance(ps["embedding_size"], Integer) and (ps["embedding_size"].lower, ps["embedding_size"].upper) == (8, 33)
    # model-based and random searches draw grid points as categories
    assert isinstance(sp.param_space(grid_as_choice=True)["loss_tau"], Categorical)
    assert sp.grid_size() == 2
    # representative values cover every category and the ends of every range
    assert sp.params["embedding_size"].representatives() == [8, 32]
    assert sp.params["learning_rate"].representatives()[0] == 1e-4
    assert sp.params["learning_rate"].representatives()[-1] == 1e-2
    assert set(SAMPLERS) >= {"grid_search", "choice", "uniform", "loguniform", "randint"}


BAD_SPACES = [
    ({"loss_tau": {"grid_search": [0.1, -1]}}, "loss_tau=-1", "> 0"),
    ({"loss_taux": {"grid_search": [0.1]}}, "loss_taux", "did you mean loss_tau"),
    ({"loss_tau": {"gird_search": [0.1, 0.2]}}, "loss_tau=", "'gird_search' is not a Ray Tune sampler"),
    ({"learning_rate": {"loguniform": [0, 0.1]}}, "learning_rate=", "lower bound greater than 0"),
    ({"loss_tau": {"uniform": [0.1]}}, "loss_tau=", "ray.tune.uniform"),
    ({"loss_tau": {"grid_search": []}}, "loss_tau=", "non-empty list"),
    ({"loss_tau": {"grid_search": [0.1], "choice": [0.2]}}, "loss_tau=", "exactly one Ray Tune sampler"),
    ({"rec_loss": "PSL", "psl_activation": {"choice": ["tanh", "gelu"]}}, "psl_activation='gelu'", "'relu'"),
    ({"rec_loss": {"grid_search": ["SL", "XL"]}}, "rec_loss='XL'", "'BSL'"),
    ({"model": {"grid_search": ["BPR", "Pop"]}}, "model='Pop'", "LightGCN"),
    ({"dsl_alpha": {"uniform": [0.0, 1.5]}, "rec_loss": "DSL"}, "dsl_alpha=1.5", "[0, 1]"),
    ({"gpu_id": {"grid_search": ["0", "1"]}}, "gpu_id=", "gpus_per_trial"),
    ({"valid_metric": {"choice": ["NDCG@20", "Recall@20"]}}, "valid_metric=", "cannot itself be searched"),
    ({"tune_options": {"num_sample": 3}, "loss_tau": 0.1}, "tune_options.num_sample", "num_samples"),
    ({"loss_tau": {"grid_search": [0.1]}, "tune_options": {"search_alg": "bayes"}}, "search_alg='bayes'", "optuna"),
    ({"loss_tau": {"grid_search": [0.1]}, "tune_options": {"scheduler": "hyperband"}}, "scheduler='hyperband'", "asha"),
]


@pytest.mark.parametrize("space,key,allowed", BAD_SPACES, ids=[b[1] for b in BAD_SPACES])
def test_invalid_space_fails_before_ray_starts(space, key, allowed, tmp_path, no_ray_left):
    import ray

    with pytest.raises(ConfigError) as e:
        run_tune(space, config_dict={"gpu_id": ""}, storage_path=tmp_path / "res")
    msg = str(e.value)
    assert key in msg and allowed in msg, msg
    assert not ray.is_initialized()
    assert not (tmp_path / "res").exists()  # no experiment folder, no trial


def test_key_on_command_line_and_in_space_is_refused(tmp_path, no_ray_left):
    with pytest.raises(ConfigError, match="loss_tau.*command line"):
        run_tune({"loss_tau": {"grid_search": [0.1, 0.2]}}, cmd_args=["--loss_tau=0.5", "--gpu_id="],
                 storage_path=tmp_path)


def test_run_tune_keywords_are_the_options_fields():
    """run_tune's search keywords and TuneOptions' fields are the same names with the same defaults."""
    params = inspect.signature(run_tune).parameters
    keywords = {n: p.default for n, p in params.items()
                if p.kind is p.KEYWORD_ONLY and n not in ("quick_start_defaults", "out", "options")}
    assert keywords == {f.name: f.default for f in dataclasses.fields(TuneOptions)}


@pytest.mark.parametrize("options,key,allowed", [
    (dict(search_alg="bayes"), "search_alg='bayes'", "optuna"),
    (dict(num_samples=0), "num_samples=0", ">= 1"),
    (dict(cpus_per_trial=0), "cpus_per_trial=0", "> 0"),
    (dict(reduction_factor=1), "reduction_factor=1", "> 1"),
    (dict(max_concurrent_trials=1.5), "max_concurrent_trials=1.5", "integer"),
    (dict(num_cpus=0), "num_cpus=0", ">= 1"),
    (dict(verbose=-1), "verbose=-1", ">= 0"),
    (dict(search_alg="optuna", startup_trials=0), "startup_trials=0", ">= 1"),
    (dict(search_alg="optuna", startup_trials=2.5), "startup_trials=2.5", "integer"),
    (dict(search_alg="random", startup_trials=3), "startup_trials=3", "optuna"),
])
def test_bad_option_is_refused_when_the_options_are_built(options, key, allowed):
    with pytest.raises(ConfigError) as e:
        TuneOptions(**options)
    assert key in str(e.value) and allowed in str(e.value), str(e.value)


def test_options_settle_from_call_then_space_then_defaults():
    opts = TuneOptions(scheduler="asha").for_space({"search_alg": "random", "scheduler": "fifo", "grace_period": None})
    assert (opts.search_alg, opts.scheduler, opts.grace_period, opts.reduction_factor) == ("random", "asha", 5, 2)
    assert opts.num_samples == 10  # not a grid: 10 samples unless given
    assert TuneOptions().for_space({}).num_samples == 1  # the grid once
    with pytest.raises(ConfigError, match="search_alg='bayes'"):  # the space's values are checked too
        TuneOptions().for_space({"search_alg": "bayes"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.search_alg = "grid"


def test_startup_trials_need_a_model_based_search_however_it_is_chosen():
    with pytest.raises(ConfigError, match="startup_trials=4.*only with search_alg"):
        TuneOptions(startup_trials=4).for_space({})  # the grid, the default
    assert TuneOptions(startup_trials=4).for_space({"search_alg": "optuna"}).startup_trials == 4
    assert TuneOptions().for_space({"search_alg": "optuna", "startup_trials": 5}).startup_trials == 5


def test_startup_trials_reach_the_searchers_sampler():
    from recbole_dsl.tune.runner import _search_alg

    default = _search_alg(TuneOptions(search_alg="optuna").for_space({}), seed=1)
    assert default._sampler is None  # Ray's default: TPESampler(seed) with Optuna's 10 random trials
    searcher = _search_alg(TuneOptions(search_alg="optuna", startup_trials=3).for_space({}), seed=1)
    assert searcher._sampler._n_startup_trials == 3
    # the seed still fixes the draws: two samplers seeded alike propose the same first point
    import optuna

    draws = []
    for _ in range(2):
        s = _search_alg(TuneOptions(search_alg="optuna", startup_trials=3).for_space({}), seed=7)._sampler
        study = optuna.create_study(sampler=s)
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] == draws[1]


def test_a_search_saved_before_startup_trials_existed_resumes_with_the_default():
    saved = {k: v for k, v in TuneOptions(search_alg="optuna").for_space({}).to_saved().items() if k != "startup_trials"}
    assert TuneOptions().resumed(saved).startup_trials is None


def test_run_tune_takes_an_options_object(tmp_path, no_ray_left):
    space = {"loss_tau": {"grid_search": [0.1, -1]}}
    with pytest.raises(ConfigError, match="loss_tau=-1"):
        run_tune(space, config_dict={"gpu_id": ""}, options=TuneOptions(storage_path=tmp_path / "res"))
    with pytest.raises(TypeError, match="not both"):
        run_tune(space, config_dict={"gpu_id": ""}, search_alg="random", options=TuneOptions())
    assert not (tmp_path / "res").exists()


def test_resume_keeps_the_saved_options_but_this_calls_verbosity():
    saved = TuneOptions(search_alg="random", cpus_per_trial=2, verbose=0).for_space({}).to_saved()
    opts = TuneOptions(search_alg="grid", verbose=2, num_cpus=4).resumed(saved)
    assert (opts.search_alg, opts.num_samples, opts.cpus_per_trial) == ("random", 10, 2)
    assert (opts.verbose, opts.num_cpus) == (2, 4)


def test_cli_bad_space_exits_2_before_any_trial(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text("rec_loss: SL\nloss_tau: {grid_search: [0.1, -1]}\n")
    r = run_cli(f"--tune={space}", f"--tune_dir={tmp_path / 'res'}", "--gpu_id=")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "loss_tau=-1" in r.stderr and "> 0" in r.stderr
    assert "Traceback" not in r.stderr
    assert "Trial" not in r.stdout and not (tmp_path / "res").exists()


def test_cli_search_options_need_tune():
    r = run_cli("--tune_samples=3")
    assert r.returncode == 2 and "--tune_samples" in r.stderr and "--tune=SPACE.yaml" in r.stderr


def test_model_and_dataset_come_from_config_files_when_not_given(tmp_path):
    from recbole_dsl.sources import key_from_sources

    f = tmp_path / "best.yaml"
    f.write_text("model: LightGCN\ndataset: ml-100k\nloss_tau: 0.1\n")
    assert key_from_sources("model", [str(f)], None, [], "BPR") == "LightGCN"
    assert key_from_sources("model", [str(f)], None, ["--model=BPR"], "BPR") == "BPR"
    assert key_from_sources("dataset", [], None, [], "ml-100k") == "ml-100k"


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_are_valid(path):
    sp = load_space(path)
    setup = _build_setup(sp, None, None, None, {"gpu_id": ""}, [], True)
    assert setup["validated_configs"] >= 1
    assert setup["config_dict"]["rec_loss"] == path.stem  # one space per loss, named after it
    assert "loss_tau" in sp.searched()


def test_a_shipped_space_can_be_named():
    assert load_space("SL").source == str(ROOT / "properties" / "tune" / "SL.yaml")
    assert load_space("PSL.yaml").params["psl_activation"].args == ["tanh", "atan", "relu"]
    with pytest.raises(ConfigError, match="nosuch.*'BSL'"):
        load_space("nosuch")


def test_shipped_spaces_cover_every_loss_with_the_papers_grids():
    from recbole_dsl import LOSSES

    assert {p.stem for p in SPACES} == set(LOSSES.names())
    grid = lambda name, key: load_space(ROOT / "properties" / "tune" / f"{name}.yaml").params[key].args
    assert grid("SL", "loss_tau") == [0.01, 0.025, 0.05, 0.1, 0.2, 0.5]  # LOSSES.md, SL
    assert grid("PSL", "loss_tau") == [0.005, 0.025, 0.05, 0.1, 0.25]  # PSL paper, halved convention
    assert set(grid("PSL", "psl_activation")) == {"tanh", "atan", "relu"}
    assert min(grid("BSL", "loss_tau")) == 0.05 and max(grid("BSL", "loss_tau")) == 1.0  # BSL's 0.05..1.0


def test_validation_points_do_not_warn_about_keys_a_trial_sets(caplog):
    """dsl_gamma uniform(-1, 1) is validated at its middle, 0, where dsl_intensity is inert; trials
    never draw exactly 0, so that point's warning is not the user's."""
    from recbole_dsl.tune.space import validate_space

    sp = parse_space({"rec_loss": "DSL", "dsl_gamma": {"uniform": [-1.0, 1.0]}, "dsl_intensity": "lse"})
    assert {0.0} < {p["dsl_gamma"] for p in sp.validation_points()}
    with caplog.at_level("WARNING"):
        assert validate_space(sp, "BPR", "ml-100k", {"gpu_id": ""}) >= 3
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]
    with caplog.at_level("WARNING"):  # outside validation, the same point still warns
        from recbole_dsl import Config
        Config("BPR", "ml-100k", config_dict={"rec_loss": "DSL", "dsl_intensity": "lse", "gpu_id": ""}, cmd_args=[])
    assert [r for r in caplog.records if "no effect" in r.getMessage()]


def test_large_space_is_validated_key_by_key():
    sp = parse_space({
        "rec_loss": {"grid_search": ["SL", "PSL"]},
        "loss_tau": {"grid_search": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]},
        "learning_rate": {"grid_search": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]},
        "neg_num": {"grid_search": [16, 32, 64, 128]},
        "psl_activation": {"grid_search": ["tanh", "relu"]},
    })
    points = sp.validation_points(cap=100)
    assert len(points) < 2 * 6 * 5 * 4 * 2
    for loss in ("SL", "PSL"):  # every value of every key is checked with every loss
        mine = [p for p in points if p["rec_loss"] == loss]
        for key in ("loss_tau", "learning_rate", "neg_num", "psl_activation"):
            assert {p[key] for p in mine} == set(sp.params[key].args)


# ----------------------------------------------------------------------------------------------
# trial isolation (unit level; the end-to-end tests check it in real trials)


def test_trial_takes_ray_gpus_and_cpus_not_recboles_defaults(monkeypatch):
    import ray
    import torch

    from recbole_dsl.tune.trial import _device_settings, trial_config

    threads = torch.get_num_threads()
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    try:
        assert _device_settings(2) == "3"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert _device_settings(threads) == ""  # no GPU from Ray: CPU, never RecBole's default '0'
    setup = {"model": "BPR", "dataset": "ml-100k", "config_dict": {"rec_loss": "SL", "gpu_id": "0"}}
    model, dataset, cfg = trial_config(setup, {"loss_tau": 0.3, "model": "LightGCN"}, "", "/x/checkpoints")
    assert (model, dataset) == ("LightGCN", "ml-100k")
    assert cfg == {"rec_loss": "SL", "gpu_id": "", "loss_tau": 0.3, "checkpoint_dir": "/x/checkpoints"}


class _ConfigBuilt(Exception):
    """Raised in place of RecBole's data preparation: the trial's Config exists, the test has it."""


@pytest.mark.parametrize("entry", ["recbole_trial", "evaluate_best"])
def test_trial_config_does_not_read_the_workers_argv(entry, monkeypatch, tmp_path):
    """What Ray runs in a worker (the trial, the final test) builds its Config through
    quick_start.build; the worker's sys.argv (Ray's arguments, here also a loss_tau) must not
    reach it, so the point's loss_tau=0.3 is the one the trial trains with."""
    import ray
    import torch
    from ray.air import session

    import recbole_dsl.quick_start as quick_start
    from recbole_dsl.tune.trial import evaluate_best, recbole_trial

    built = {}

    def stop_after_config(config):
        built["config"] = config
        raise _ConfigBuilt

    monkeypatch.setattr(quick_start, "prepare", stop_after_config)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(session, "get_trial_dir", lambda: str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["default_worker.py", "--node-ip-address=127.0.0.1", "--loss_tau=9"])
    setup = {"model": "BPR", "dataset": "ml-100k", "config_dict": {"rec_loss": "SL", "gpu_id": ""},
             "cpus_per_trial": torch.get_num_threads()}
    with pytest.raises(_ConfigBuilt):
        if entry == "recbole_trial":
            recbole_trial({"loss_tau": 0.3}, setup)
        else:
            evaluate_best(setup, {"loss_tau": 0.3}, b"", str(tmp_path / "best_test"))
    config = built["config"]
    assert config["loss_tau"] == 0.3
    assert config.cmd_config_dict == {}


# ----------------------------------------------------------------------------------------------
# output files (unit level)


def test_best_config_yaml_reads_back_with_recboles_loader(tmp_path):
    from recbole_dsl import Config

    text = rpt.best_config_yaml({"model": "BPR", "dataset": "ml-100k", "rec_loss": "SL", "loss_tau": 0.05,
                                 "learning_rate": 1e-5, "weight_decay": 0.0, "topk": [20], "gpu_id": ""},
                                ["Best configuration", "Rerun: ..."])
    assert text.startswith("# Best configuration\n")
    f = tmp_path / "best.yaml"
    f.write_text(text)
    config = Config(config_file_list=[str(f)], cmd_args=[])
    assert config["model"] == "BPR" and config["loss_tau"] == 0.05
    assert config["learning_rate"] == 1e-5 and isinstance(config["learning_rate"], float)


def test_plot_draws_one_series_per_loss():
    rows = [{"rec_loss": loss, "loss_tau": t, "best valid ndcg@20": 0.1 + i * 0.01 + j * 0.001}
            for i, loss in enumerate(["SL", "BSL"]) for j, t in enumerate([0.05, 0.1, 0.2])]
    x = rpt.plot_x_key(["rec_loss", "loss_tau"], rows)
    assert x == "loss_tau"
    series = rpt.series_keys(["rec_loss", "loss_tau"], rows, x)
    assert series == ["rec_loss"]
    svg = rpt.svg_plot(rows, x, "best valid ndcg@20", "validation ndcg@20", series, "t")
    assert svg.count("<polyline") == 2 and ">SL<" in svg and ">BSL<" in svg and "log scale" not in svg
    assert svg.lstrip().startswith("<svg") and svg.rstrip().endswith("</svg>")


def test_table_sorts_failed_trials_last():
    rows = [{"s": 0.1}, {"s": None}, {"s": 0.3}, {"s": float("nan")}]
    assert [r["s"] for r in rpt.sort_rows(rows, "s", bigger=True)][:2] == [0.3, 0.1]
    assert [r["s"] for r in rpt.sort_rows(rows, "s", bigger=False)][:2] == [0.1, 0.3]


# ----------------------------------------------------------------------------------------------
# Ray's processes: run_tune stops every process of the local Ray it started, and only those


def test_ray_processes_are_recognised_by_their_command_line():
    site = "/venv/lib/python3.11/site-packages"
    kinds = {
        "raylet": [f"{site}/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/ray/s/raylet"],
        "gcs_server": [f"{site}/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray/logs"],
        "dashboard agent": ["/venv/bin/python", "-u", f"{site}/ray/dashboard/agent.py", "--node-ip-address=1"],
        "dashboard": ["/venv/bin/python", f"{site}/ray/dashboard/dashboard.py", "--host=127.0.0.1"],
        "log_monitor": ["/venv/bin/python", "-u", f"{site}/ray/_private/log_monitor.py", "--logs-dir=/x"],
        "monitor": ["/venv/bin/python", "-u", f"{site}/ray/autoscaler/_private/monitor.py", "--logs-dir=/x"],
        "runtime_env agent": ["/venv/bin/python", f"{site}/ray/_private/runtime_env/agent/main.py"],
        "worker": ["ray::IDLE" + " " * 40],
        "ray_client_server": ["/venv/bin/python", "-m", "ray.util.client.server", "--port=1"],
    }
    for kind, argv in kinds.items():
        assert rproc.ray_kind(argv) == kind, argv
    assert rproc.ray_kind([f"{site}/ray/_private/workers/default_worker.py", "--node-ip-address=1"]) == "worker"
    for other in ([sys.executable, "-m", "pytest", "tests/test_tune.py"], [sys.executable, str(CLI[1]), "--tune=SL"],
                  ["bash", "-c", "ray stop"], []):
        assert rproc.ray_kind(other) is None, other


def _fake_ray_process(started, env_extra, title="ray::IDLE", ignore_term=False):
    """A process the listing takes for a Ray worker (its command line is ray::...), with
    `env_extra` in its environment (appended to `started`); with ignore_term, SIGTERM does not end it."""
    trap = "trap '' TERM; " if ignore_term else ""
    p = subprocess.Popen(["bash", "-c", f"{trap}exec -a '{title}' sleep 120"], env=dict(os.environ, **env_extra),
                         stdin=subprocess.DEVNULL)
    started.append(p)
    deadline = time.time() + 10
    while not any(q.pid == p.pid for q in rproc.ray_processes()):  # once bash has exec'd
        assert time.time() < deadline, "the fake Ray process did not show up"
        time.sleep(0.02)
    return p


def test_shutdown_stops_the_stragglers_of_its_own_session_only(tmp_path):
    """Stragglers are found by the session's token or folder; one ignoring SIGTERM is killed;
    a Ray process of another session (same machine, same user) is left alone."""
    from recbole_dsl.tune.runner import SESSION_ENV, RaySession, _shutdown_ray

    session = RaySession(local=True, token="123-456", session_dir=str(tmp_path / "session_x"))
    started = []
    try:
        own = _fake_ray_process(started, {SESSION_ENV: "123-456"})
        deaf = _fake_ray_process(started, {SESSION_ENV: "123-456"}, ignore_term=True)
        named = _fake_ray_process(started, {}, title=f"ray::IDLE --log_dir={tmp_path / 'session_x'}/logs")
        other = _fake_ray_process(started, {SESSION_ENV: "123-4567"})  # another session's token
        near = _fake_ray_process(started, {}, title=f"ray::IDLE --log_dir={tmp_path / 'session_xy'}/logs")
        assert {q.pid for q in session.live_processes()} == {own.pid, deaf.pid, named.pid}
        t0 = time.time()
        _shutdown_ray(session)
        assert time.time() - t0 < 10
        for p in (own, deaf, named):
            assert p.wait(timeout=5) is not None
        assert own.returncode == -signal.SIGTERM and deaf.returncode == -signal.SIGKILL
        assert other.poll() is None and near.poll() is None  # not this session's: untouched
        assert RaySession(local=False).live_processes() == []  # a cluster joined by address: nothing is ours
    finally:
        for p in started:
            p.kill()
            p.wait()


def test_ray_init_drawing_a_port_twice_is_retried_once(monkeypatch):
    """Ray 2.6 can draw its fixed dashboard-agent port for another component and then refuse to
    start (seen in this suite); a second ray.init draws again. Any other failure is raised."""
    import ray

    from recbole_dsl.tune.runner import SESSION_ENV, _init_ray

    clash = ValueError("Ray component metrics_export is trying to use a port number 52365 that is used by "
                       "other components.\nPort information: {...}")
    calls = []

    def fake_init(**kw):
        calls.append(os.environ.get(SESSION_ENV))
        if len(calls) == 1 or fail_again:
            raise clash

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    fail_again = False
    session = _init_ray(None, 1, None, None, verbose=0)
    assert len(calls) == 2 and calls[0] == calls[1] == session.token and session.local
    assert SESSION_ENV not in os.environ
    calls.clear()
    fail_again = True
    with pytest.raises(ValueError, match="used by other components"):
        _init_ray(None, 1, None, None, verbose=0)
    assert len(calls) == 2  # once retried, not more
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(1) or (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(RuntimeError, match="no"):
        _init_ray(None, 1, None, None, verbose=0)
    assert calls == [1]


@pytest.mark.slow
def test_a_local_ray_session_leaves_no_process(ray_tmp, no_ray_process_left):
    """The listing sees a real local Ray (the raylet's children too), and _shutdown_ray returns
    only when all of them are gone; ray.shutdown() alone leaves the raylet's dashboard agent
    running a few seconds, orphaned."""
    import ray

    from recbole_dsl.tune.runner import SESSION_ENV, _init_ray, _shutdown_ray

    session = _init_ray(None, 1, None, ray_tmp, verbose=0)
    try:
        assert session.local and session.session_dir.startswith(ray_tmp)
        assert SESSION_ENV not in os.environ  # set only while Ray starts
        worker_pid = ray.get(ray.remote(lambda: os.getpid()).remote())
        running = session.live_processes()
        kinds = {p.kind for p in running}
        assert {"gcs_server", "raylet", "dashboard agent", "worker"} <= kinds, running
        assert worker_pid in {p.pid for p in running}
        # the test's own mark finds the same processes (conftest.py relies on it)
        assert {p.pid for p in rproc.ray_processes(env=no_ray_process_left)} >= {p.pid for p in running}
    finally:
        _shutdown_ray(session)
    assert not ray.is_initialized()
    assert [p for p in running if rproc.alive(p)] == []
    assert_no_ray_process(no_ray_process_left)


@pytest.mark.slow
def test_cli_search_failing_after_ray_started_leaves_no_process(slice_root, tmp_path, ray_tmp, no_ray_process_left):
    """A search that stops with an error once its Ray runs (here: resuming a folder Ray saved
    nothing in) exits 2 and leaves no Ray process behind either."""
    from recbole_dsl.tune.runner import _new_search

    space = {"rec_loss": "SL", "loss_tau": {"grid_search": [0.1]}}
    exp, _, _ = _new_search(space, TuneOptions(storage_path=tmp_path, name="empty"), None, "ml-slice", None,
                            dict(TRIAL, data_path=str(slice_root)), [], True)
    r = run_cli(f"--tune_resume={exp}", "--tune_verbose=0", env={"RAY_TMPDIR": ray_tmp})
    assert r.returncode == 2 and "no experiment state found" in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    assert list(Path(ray_tmp).rglob("raylet.out")), "Ray did not start"  # the error came after Ray had started
    assert_no_ray_process(no_ray_process_left)


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_grid_search_end_to_end_and_best_config_runs_in_the_cli(slice_root, tmp_path, ray_tmp, no_ray_process_left):
    space = tmp_path / "sl.yaml"
    space.write_text("rec_loss: SL\nloss_tau: {grid_search: [0.05, 0.2, 0.5]}\n")
    res = tmp_path / "res"
    r = run_cli(f"--tune={space}", *cli_args(slice_root), f"--tune_dir={res}", "--tune_name=grid",
                "--tune_cpus=1", "--tune_max_concurrent=2", "--tune_verbose=1", env={"RAY_TMPDIR": ray_tmp})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_no_ray_process(no_ray_process_left)
    exp = res / "grid"
    # Ray's live status table, then the sorted summary
    assert "Trial status:" in r.stdout and "TERMINATED" in r.stdout
    assert "Trials sorted by validation ndcg@20" in r.stdout
    rows = read_csv(exp / "trials.csv")
    assert len(rows) == 3 and {float(x["loss_tau"]) for x in rows} == {0.05, 0.2, 0.5}, r.stdout[-3000:]
    scores = [float(x["best valid ndcg@20"]) for x in rows]
    assert scores == sorted(scores, reverse=True) and all(x["status"] == "finished" for x in rows), r.stdout[-3000:]
    # isolation: own checkpoint folder and RecBole log per trial, 1 torch thread per CPU, CPU device
    for x in rows:
        trial_dir = Path(x["trial_dir"])
        assert len(list((trial_dir / "checkpoints").glob("*.pth"))) == 1
        assert len(list((trial_dir / "log").rglob("*.log"))) == 1
        assert x["threads"] == "1" and x["device"] == "cpu" and int(x["epochs"]) == 2
    # validation reported at every evaluation step
    progress = read_csv(Path(rows[0]["trial_dir"]) / "progress.csv")
    assert [int(p["epoch"]) for p in progress] == [1, 2] and all(p["valid_ndcg@20"] for p in progress)
    assert not any("test" in k for k in progress[0])  # trials never report a test number
    svg = (exp / "valid_vs_loss_tau.svg").read_text()
    assert "<polyline" in svg
    best_yaml = exp / "best_config.yaml"
    text = best_yaml.read_text()
    assert f"loss_tau: {rows[0]['loss_tau']}" in text and "model: BPR" in text and "dataset: ml-slice" in text
    assert "Test of this configuration only" in text
    assert f"validation ndcg@20 = {float(rows[0]['best valid ndcg@20']):.4f}" in text
    # the best config file is accepted by the command line unchanged and reproduces the trial
    # (one torch thread, as in the trial, so the rerun is bit-for-bit the same computation)
    r2 = run_cli(f"--config_files={best_yaml}", f"--checkpoint_dir={tmp_path / 'ck'}", env={"OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    valid = dict(kv.split(": ") for kv in r2.stdout.split("valid: ")[1].splitlines()[0].split(", "))
    assert float(valid["ndcg@20"]) == pytest.approx(float(rows[0]["best valid ndcg@20"]), abs=2e-4), (r2.stdout, rows)


@pytest.mark.slow
def test_asha_stops_trials_early(slice_root, tmp_path, ray_tmp, no_ray_left, no_ray_process_left):
    # One trial at a time; ASHA runs the grid in a seeded shuffled order (here 0.2, 0.001, 0.002), and
    # must stop the temperatures that lag behind 0.2 at its rungs.
    space = {"rec_loss": "SL", "loss_tau": {"grid_search": [0.2, 0.002, 0.001]}}
    result = run_tune(space, dataset="ml-slice", config_dict=dict(TRIAL, data_path=str(slice_root), epochs=4),
                      scheduler="asha", grace_period=1, reduction_factor=2, max_concurrent_trials=1,
                      storage_path=tmp_path, name="asha", num_cpus=2, ray_temp_dir=ray_tmp, verbose=0,
                      test_best=False)
    assert_no_ray_process(no_ray_process_left)
    rows = {r["loss_tau"]: r for r in result.rows}
    assert rows[0.2]["status"] == "finished" and rows[0.2]["epochs"] == 4
    stopped = [r for r in result.rows if r["status"] == "stopped early"]
    assert stopped and all(r["epochs"] < 4 for r in stopped)
    assert result.epochs_total < 3 * 4
    assert result.best["params"] == {"loss_tau": 0.2}
    assert len(read_csv(result.csv_path)) == 3


@pytest.mark.slow
def test_failing_trial_is_reported_and_the_search_goes_on(slice_root, tmp_path, ray_tmp, no_ray_left, no_ray_process_left):
    # neg_num=5000 passes the up-front checks (>= 1) but the slice has ~1400 items: the sampler
    # refuses it once the dataset is loaded, inside the trial.
    space = {"rec_loss": "SL", "loss_tau": 0.2, "neg_num": {"grid_search": [16, 5000]}}
    result = run_tune(space, dataset="ml-slice", config_dict=dict(TRIAL, data_path=str(slice_root), epochs=1),
                      storage_path=tmp_path, name="fail", num_cpus=2, ray_temp_dir=ray_tmp, verbose=0)
    assert_no_ray_process(no_ray_process_left)
    assert result.num_errors == 1
    bad = next(r for r in result.rows if r["neg_num"] == 5000)
    assert bad["status"] == "error" and "neg_num=5000" in bad["error"] and "number of items" in bad["error"]
    assert result.rows[-1] is bad  # failed trials sort last
    assert result.best["params"] == {"neg_num": 16} and result.best["test"]["ndcg@20"] >= 0
    assert "neg_num=5000" in result.summary and os.path.isfile(result.best_config_path)
    rows = read_csv(result.csv_path)
    assert len(rows) == 2 and "neg_num=5000" in next(r for r in rows if r["status"] == "error")["error"]


@pytest.mark.slow
def test_optuna_search_through_ray_tune(slice_root, tmp_path, ray_tmp, no_ray_left, no_ray_process_left):
    space = {"rec_loss": "SL", "loss_tau": {"loguniform": [0.02, 0.5]}, "neg_num": {"grid_search": [16, 32]}}
    result = run_tune(space, dataset="ml-slice", config_dict=dict(TRIAL, data_path=str(slice_root), epochs=1),
                      search_alg="optuna", num_samples=2, startup_trials=1,  # the second trial is TPE's
                      storage_path=tmp_path, name="optuna", num_cpus=2,
                      ray_temp_dir=ray_tmp, verbose=0, test_best=False)
    assert_no_ray_process(no_ray_process_left)
    assert len(result.rows) == 2 and result.num_errors == 0, result.summary
    taus = [r["loss_tau"] for r in result.rows]
    assert all(0.02 <= t <= 0.5 for t in taus) and len(set(taus)) == 2, result.summary
    assert {r["neg_num"] for r in result.rows} <= {16, 32}  # the grid became a category for Optuna
    assert any(Path(result.path).glob("searcher-state-*.pkl")), os.listdir(result.path)  # Optuna's state, for resuming


def _done_trials(exp: Path):
    done = []
    for rj in exp.glob("recbole_trial_*/result.json"):
        lines = [l for l in rj.read_text().splitlines() if l.strip()]
        if lines and json.loads(lines[-1]).get("final"):  # its last evaluation was reported
            done.append(rj.parent)
    return done


@pytest.mark.slow
def test_interrupted_search_resumes_without_redoing_finished_trials(slice_root, tmp_path, ray_tmp, no_ray_process_left):
    space = tmp_path / "sl.yaml"
    space.write_text("rec_loss: SL\nloss_tau: {grid_search: [0.1, 0.2, 0.4]}\n")
    res = tmp_path / "res"
    exp = res / "resume"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    p = subprocess.Popen(CLI + [f"--tune={space}", *cli_args(slice_root), f"--tune_dir={res}", "--tune_name=resume",
                                "--tune_max_concurrent=1", "--tune_verbose=0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        # Interrupt once a trial has finished: its last report is not enough (Ray marks it done a
        # moment later, and saves it as unfinished if interrupted in between); one trial at a time,
        # the next trial's folder appears only after Ray has marked the first one done.
        deadline = time.time() + 180
        while not (_done_trials(exp) and len(list(exp.glob("recbole_trial_*"))) >= 2) \
                and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, "the search ended before it could be interrupted"
        p.send_signal(signal.SIGINT)  # Ctrl+C: Ray Tune saves the experiment state and stops
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, out[-2000:] + err[-3000:]
    assert_no_ray_process(no_ray_process_left)  # interrupted, it still stopped its Ray
    assert "--tune_resume=" in out
    first = {r["trial_id"]: r for r in read_csv(exp / "trials.csv")}
    finished = {t for t, r in first.items() if r["status"] == "finished"}
    assert finished and len(finished) < 3 and not (exp / "best_config.yaml").exists()
    logs_before = {t: sorted(Path(first[t]["trial_dir"]).joinpath("log").rglob("*.log")) for t in finished}

    r = run_cli(f"--tune_resume={exp}", "--tune_verbose=0", "--tune_no_test", env={"RAY_TMPDIR": ray_tmp})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_no_ray_process(no_ray_process_left)
    rows = {x["trial_id"]: x for x in read_csv(exp / "trials.csv")}
    assert set(first) <= set(rows) and len(rows) == 3  # the grid's last point is created on resume
    assert all(x["status"] == "finished" for x in rows.values())
    for t in finished:  # finished trials were not run again: same single RecBole log, same score
        assert sorted(Path(rows[t]["trial_dir"]).joinpath("log").rglob("*.log")) == logs_before[t]
        assert len(logs_before[t]) == 1
        assert rows[t]["best valid ndcg@20"] == first[t]["best valid ndcg@20"]
    assert (exp / "best_config.yaml").exists()


_PORTS_GIVEN: set = set()


def _free_port():
    """A free port not handed out before in this test process: the OS may give the same free port to
    two successive binds, and Ray refuses a node whose components share one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def _session_pids(sid):
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] is the state, fields[3] the session id
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def _ray_start(args, temp_env):
    """`ray start` in a session of its own: every process of that node keeps its session id."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    ports = [f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--metrics-export-port={_free_port()}"]
    p = subprocess.Popen([ray_bin, "start", "--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats",
                          *ports, *args], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=temp_env, stdin=subprocess.DEVNULL)
    out, _ = p.communicate(timeout=120)
    return p.pid, p.returncode, out


def _stop_session(sid, grace=10):
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while _session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_search_on_a_two_node_ray_cluster(slice_root, tmp_path, ray_tmp, no_ray_process_left):
    """A Ray head and a second Ray node on this machine, 1 CPU each; the search joins with the
    address option and its trials run on both nodes. Both nodes are shut down by the ids of the
    processes they started (not `ray stop`, which would stop every Ray on the machine)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    sessions = []
    try:
        head = _ray_start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                           f"--ray-client-server-port={_free_port()}", f"--temp-dir={ray_tmp}",
                           "--min-worker-port=0", "--max-worker-port=0"], env)
        sessions.append(head[0])
        assert head[1] == 0, head[2][-3000:]
        node = _ray_start([f"--address=127.0.0.1:{port}", "--num-cpus=1",
                           "--min-worker-port=0", "--max-worker-port=0"], env)
        sessions.append(node[0])
        assert node[1] == 0, node[2][-3000:]
        space = tmp_path / "sl.yaml"
        space.write_text("rec_loss: SL\nloss_tau: {grid_search: [0.1, 0.2]}\n")
        res = tmp_path / "res"
        cluster = [p for p in rproc.ray_processes(env=no_ray_process_left) if p.kind in ("raylet", "gcs_server")]
        assert len(cluster) == 3  # a raylet per node, the head's GCS
        # two 1-CPU trials on two 1-CPU nodes start together: one lands on each node
        r = run_cli(f"--tune={space}", *cli_args(slice_root, epochs=1), f"--tune_dir={res}", "--tune_name=cluster",
                    f"--tune_address=127.0.0.1:{port}", "--tune_verbose=0", "--tune_no_test",
                    env={"RAY_TMPDIR": ray_tmp})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert all(rproc.alive(p) for p in cluster)  # a cluster the search joined is left running
        rows = read_csv(res / "cluster" / "trials.csv")
        assert len(rows) == 2 and all(x["status"] == "finished" for x in rows), [(x["status"], x["error"]) for x in rows]
        assert len({x["node"] for x in rows}) == 2  # trials ran on both nodes
        assert (res / "cluster" / "best_config.yaml").exists()
    finally:
        for sid in sessions:
            _stop_session(sid)
    for sid in sessions:
        assert _session_pids(sid) == []  # both nodes are down
