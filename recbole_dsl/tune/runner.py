"""The search itself: Ray Tune over the plugin's Config, data preparation and trainer.

run_tune() validates everything before Ray starts, runs the trials (locally or on a Ray cluster),
and leaves in the experiment folder: trials.csv (one row per trial), best_config.yaml (accepted
by run_recbole_dsl.py --config_files= as it is), valid_vs_<key>.svg and Ray's own files (which is
what resuming reads). The test split is scored once, for the chosen configuration only.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from recbole_dsl.errors import ConfigError
from recbole_dsl.sources import key_from_sources
from recbole_dsl.tune import processes
from recbole_dsl.tune import report as rpt
from recbole_dsl.tune.space import (
    SPACE_OPTIONS, SearchSpace, load_space, parse_space, preserved_env, validate_space,
)
from recbole_dsl.tune.trial import CONFIG_ARGS, _plain, evaluate_best, recbole_trial

SEARCH_ALGS = ("grid", "random", "optuna", "hyperopt")
# The searches that fit a model to the finished trials; the first startup_trials of them are random
# draws (the libraries' defaults: Optuna's TPE 10, HyperOpt 20).
MODEL_BASED = ("optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha")
SETUP_FILE = "recbole_dsl_tune.pkl"
MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"
DEFAULT_STORAGE = "ray_results"
# Set while run_tune starts a local Ray: every process of that session inherits it (processes.py).
SESSION_ENV = "RECBOLE_DSL_RAY_SESSION"
# Defaults of the options a space's tune_options may also set (num_samples depends on search_alg).
SPACE_OPTION_DEFAULTS = {"search_alg": "grid", "scheduler": "fifo", "grace_period": 5, "reduction_factor": 2}
# The options SETUP_FILE keeps, so that a resume runs the search it continues.
SAVED_OPTIONS = SPACE_OPTIONS + ("cpus_per_trial", "gpus_per_trial", "max_concurrent_trials", "verbose")

log = logging.getLogger("recbole_dsl.tune")


class SearchAborted(RuntimeError):
    """Ray Tune stopped the whole search (not one trial); the message says how to resume it."""


@dataclass
class TuneResult:
    """What run_tune returns; every file it names is in `path`."""

    path: str
    rows: List[Dict[str, Any]]                  # one per trial, sorted by the validation metric
    columns: List[str]
    metric: str                                 # e.g. "ndcg@20"
    best: Optional[Dict[str, Any]] = None       # trial_id, params, best_valid_score, best_epoch, valid, test
    best_config: Optional[Dict[str, Any]] = None
    csv_path: Optional[str] = None
    best_config_path: Optional[str] = None
    plot_path: Optional[str] = None
    interrupted: bool = False
    num_errors: int = 0
    epochs_total: int = 0
    wall_time_s: float = 0.0
    resume_command: Optional[str] = None
    summary: str = ""

    @property
    def dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)


# ----------------------------------------------------------------------------------------------
# options

def _is_int(v) -> bool:
    """An integer option: Python's bools are ints, but True trials or epochs is a mistake."""
    return isinstance(v, int) and not isinstance(v, bool)


def _first_set(*values):
    """The first value that is not None (None: not given, also a YAML null in tune_options)."""
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class TuneOptions:
    """How run_tune searches, as opposed to what it searches (the space, model, dataset, config).

    The fields are run_tune's keyword arguments of the same names. Built (and replaced) only
    through the constructor, which checks every value: a bad option is a ConfigError naming it
    before the space is read or Ray starts. Frozen, so that the options checked are the options
    used. The SPACE_OPTIONS are None until `for_space` settles them: an argument given here wins
    over the space's tune_options, which win over the defaults.
    """

    num_samples: Optional[int] = None
    search_alg: Optional[str] = None
    scheduler: Optional[str] = None
    grace_period: Optional[int] = None
    reduction_factor: Optional[float] = None
    startup_trials: Optional[int] = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent_trials: Optional[int] = None
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    ray_temp_dir: Optional[str] = None
    storage_path: Union[str, os.PathLike] = DEFAULT_STORAGE
    name: Optional[str] = None
    resume: Union[str, os.PathLike, None] = None
    retry_errored: bool = False
    verbose: int = 1
    test_best: bool = True

    def __post_init__(self):
        """Every TuneOptions is checked: dataclasses.replace builds through here too."""
        self._check_values()
        self._check_search_library()

    def _check_values(self) -> None:
        """Refuse out-of-range values while the user still sees which option was wrong."""
        if self.search_alg is not None and self.search_alg not in SEARCH_ALGS:
            raise ConfigError("search_alg", self.search_alg, f"one of {list(SEARCH_ALGS)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ConfigError("scheduler", self.scheduler, f"one of {list(SCHEDULERS)}")
        if self.num_samples is not None and (not _is_int(self.num_samples) or self.num_samples < 1):
            raise ConfigError("num_samples", self.num_samples, "an integer >= 1")
        if self.grace_period is not None and (not _is_int(self.grace_period) or self.grace_period < 1):
            raise ConfigError("grace_period", self.grace_period, "an integer >= 1 (epochs)")
        if self.reduction_factor is not None and (not isinstance(self.reduction_factor, (int, float))
                                                  or self.reduction_factor <= 1):
            raise ConfigError("reduction_factor", self.reduction_factor, "a number > 1")
        st = self.startup_trials
        if st is not None and (not _is_int(st) or st < 1):
            raise ConfigError("startup_trials", st, "an integer >= 1 (random trials before the search's model guides it)")
        # search_alg None: the space's tune_options still settle it (for_space checks again)
        if st is not None and self.search_alg is not None and self.search_alg not in MODEL_BASED:
            raise ConfigError("startup_trials", st, f"only with search_alg one of {list(MODEL_BASED)}",
                              hint=f"search_alg is {self.search_alg!r}, which draws every trial without a model")
        if not isinstance(self.cpus_per_trial, (int, float)) or self.cpus_per_trial <= 0:
            raise ConfigError("cpus_per_trial", self.cpus_per_trial, "a number > 0")
        if not isinstance(self.gpus_per_trial, (int, float)) or self.gpus_per_trial < 0:
            raise ConfigError("gpus_per_trial", self.gpus_per_trial, "a number >= 0")
        mc = self.max_concurrent_trials
        if mc is not None and (not _is_int(mc) or mc < 1):
            raise ConfigError("max_concurrent_trials", mc, "an integer >= 1")
        if self.num_cpus is not None and (not _is_int(self.num_cpus) or self.num_cpus < 1):
            raise ConfigError("num_cpus", self.num_cpus, "an integer >= 1")
        if not _is_int(self.verbose) or self.verbose < 0:
            raise ConfigError("verbose", self.verbose, "an integer >= 0 (0 quiet, 1 status table, 2 everything)")

    def _check_search_library(self) -> None:
        """optuna and hyperopt are optional: say what to install now, not after Ray has started."""
        if self.search_alg == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError:
                raise ConfigError("search_alg", "optuna", "an installed search library",
                                  hint="pip install 'optuna>=3.4,<4'") from None
        if self.search_alg == "hyperopt":
            try:
                import hyperopt  # noqa: F401
            except ImportError:
                raise ConfigError("search_alg", "hyperopt", "an installed search library",
                                  hint="pip install hyperopt (or use search_alg optuna, which recbole_dsl installs)") from None

    @property
    def gives_space_options(self) -> bool:
        """Whether any SPACE_OPTIONS was given: a resume says that it ignores them."""
        return any(getattr(self, k) is not None for k in SPACE_OPTIONS)

    def for_space(self, space_options: Mapping[str, Any]) -> "TuneOptions":
        """These options with the SPACE_OPTIONS settled: given here, else the space's, else the default."""
        chosen = {k: _first_set(getattr(self, k), space_options.get(k), SPACE_OPTION_DEFAULTS.get(k))
                  for k in SPACE_OPTIONS}
        if chosen["num_samples"] is None:
            chosen["num_samples"] = 1 if chosen["search_alg"] == "grid" else 10
        return dataclasses.replace(self, **chosen)

    def to_saved(self) -> Dict[str, Any]:
        """The SAVED_OPTIONS as the plain dict SETUP_FILE holds (a format older searches share)."""
        return {k: getattr(self, k) for k in SAVED_OPTIONS}

    def resumed(self, saved: Mapping[str, Any]) -> "TuneOptions":
        """The options of the search being resumed; only verbosity and where to run come from this call."""
        # searches saved before an option existed ran with its default
        return dataclasses.replace(self, **{k: saved.get(k) for k in SAVED_OPTIONS if k != "verbose"})


def _call_options(options: Optional[TuneOptions], keywords: Mapping[str, Any]) -> TuneOptions:
    """run_tune's options: `options`, or else its keyword arguments; mixing both would hide one of them."""
    from_keywords = TuneOptions(**keywords)
    if options is None:
        return from_keywords
    if from_keywords != TuneOptions():
        raise TypeError("run_tune: give the search options either as options=TuneOptions(...) "
                        "or as keyword arguments, not both")
    return options


def _search_alg(o: TuneOptions, seed):
    """Ray's search algorithm for o.search_alg, seeded by the config's seed (reproducible searches)."""
    from ray.tune.search import BasicVariantGenerator

    if o.search_alg in ("grid", "random"):
        # Ray ignores TuneConfig.max_concurrent_trials for a generator instance: give it here.
        return BasicVariantGenerator(max_concurrent=o.max_concurrent_trials or 0, random_state=seed)
    if o.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        if o.startup_trials is None:
            return OptunaSearch(seed=seed)
        from optuna.samplers import TPESampler  # Ray's default sampler, with its startup count set

        return OptunaSearch(sampler=TPESampler(seed=seed, n_startup_trials=o.startup_trials))
    from ray.tune.search.hyperopt import HyperOptSearch

    if o.startup_trials is None:
        return HyperOptSearch(random_state_seed=seed)
    return HyperOptSearch(random_state_seed=seed, n_initial_points=o.startup_trials)


def _scheduler(o: TuneOptions, max_epochs):
    """Ray's trial scheduler: None (FIFO, every trial runs to its end) or ASHA, in epochs."""
    if o.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    grace = min(o.grace_period, max_epochs)
    # metric and mode come from TuneConfig (Ray refuses them twice)
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace,
                         reduction_factor=o.reduction_factor)


# ----------------------------------------------------------------------------------------------
# setup (what the trials need), built and checked before Ray starts

def _abs_data_path(cfg: Dict[str, Any]) -> None:
    """Trials run in their own directories: a relative data_path would resolve there."""
    dp = cfg.get("data_path")
    if isinstance(dp, str) and dp and not os.path.isabs(dp):
        cfg["data_path"] = os.path.abspath(dp)


def _build_setup(sp: SearchSpace, model, dataset, config_file_list, config_dict, cmd_args,
                 quick_start_defaults: bool) -> Dict[str, Any]:
    """What every trial needs, as plain picklable data; building the base Config and checking
    every point of the space here is what makes a bad setting fail before any trial starts."""
    from recbole_dsl.config import Config
    from recbole_dsl.quick_start import quick_start_config_file

    if model is None:
        model = (sp.params["model"].representatives()[0] if "model" in sp.params
                 else key_from_sources("model", config_file_list, config_dict, cmd_args, "BPR"))
    if dataset is None:
        dataset = (sp.params["dataset"].representatives()[0] if "dataset" in sp.params
                   else key_from_sources("dataset", config_file_list, config_dict, cmd_args, "ml-100k"))
    files = ([quick_start_config_file()] if quick_start_defaults else []) + [
        os.path.abspath(f) for f in (config_file_list or [])
    ]
    base_dict = dict(config_dict or {})
    base_dict.setdefault("gpu_id", "")  # the driver never takes a device; trials get Ray's
    with preserved_env("CUDA_VISIBLE_DEVICES"):
        base = Config(model=model, dataset=dataset, config_file_list=files, config_dict=base_dict,
                      cmd_args=list(cmd_args or []))
    for key in sp.params:
        if key in base.cmd_config_dict:
            raise ConfigError(
                key, base.cmd_config_dict[key], "a key that is not also in the search space",
                hint=f"{key} is set on the command line and searched in the space; drop one of them",
            )
    ext = dict(base.external_config_dict)
    if not any("gpu_id" in d for d in (base.file_config_dict, base.cmd_config_dict, config_dict or {})):
        ext.pop("gpu_id", None)
    for k in CONFIG_ARGS:
        ext.pop(k, None)
    _abs_data_path(ext)
    consts = sp.constants()
    trial_dict = dict(ext)
    trial_dict.update({k: v for k, v in consts.items() if k not in CONFIG_ARGS})
    model = consts.get("model", base["model"])
    dataset = consts.get("dataset", base["dataset"])
    n_points = validate_space(sp, model, dataset, trial_dict, base.internal_config_dict)
    epochs = [base["epochs"]]
    if "epochs" in sp.params:
        epochs = [int(v) for v in sp.params["epochs"].representatives()]
    return {
        "model": model,
        "dataset": dataset,
        "config_dict": _plain(trial_dict),
        "metric": str(base["valid_metric"]).lower(),
        "bigger": bool(base["valid_metric_bigger"]),
        "max_epochs": max(epochs),
        "seed": int(base["seed"]) if base["seed"] is not None else None,
        "space": sp.to_dict(),
        "space_source": sp.source,
        "searched": sp.searched(),
        "validated_configs": n_points,
    }


def _trial_setup(setup: Mapping[str, Any], opts: TuneOptions) -> Dict[str, Any]:
    """The setup plus what this run (not the saved search) tells the trials: threads and console logs."""
    return dict(setup, cpus_per_trial=opts.cpus_per_trial, trial_console_logs=opts.verbose >= 2)


# ----------------------------------------------------------------------------------------------
# the experiment folder: a new search saves its setup and options there, a resume reads them back

def _experiment_name(sp: SearchSpace, setup) -> str:
    """A default folder name that says what was searched, and when."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{sp.name}-{setup['model']}-{setup['dataset']}-{stamp}"


def _new_experiment_dir(opts: TuneOptions, sp: SearchSpace, setup) -> str:
    """Create the folder of a new search; an existing search there is refused, not overwritten."""
    storage = os.path.abspath(os.path.expanduser(str(opts.storage_path)))
    name = opts.name or _experiment_name(sp, setup)
    exp_dir = os.path.join(storage, name)
    if os.path.exists(os.path.join(exp_dir, SETUP_FILE)):
        raise ConfigError("tune_name", name, "the name of a new search",
                          hint=f"{exp_dir} already holds a search; continue it with --tune_resume={exp_dir}")
    os.makedirs(exp_dir, exist_ok=True)
    return exp_dir


def _new_search(space, opts: TuneOptions, model, dataset, config_file_list, config_dict, cmd_args,
                quick_start_defaults: bool) -> Tuple[str, Dict[str, Any], TuneOptions]:
    """Read and check the space, settle the options, build the setup, and save both in a new
    experiment folder (which is what a resume reads). Returns (folder, setup, options)."""
    if space is None:
        raise ConfigError("tune", None, "a search space (YAML file or dict)")
    sp = load_space(space)
    opts = opts.for_space(sp.options)
    setup = _build_setup(sp, model, dataset, config_file_list, config_dict, cmd_args, quick_start_defaults)
    exp_dir = _new_experiment_dir(opts, sp, setup)
    with open(os.path.join(exp_dir, SETUP_FILE), "wb") as f:
        pickle.dump({"setup": setup, "options": opts.to_saved()}, f)
    return exp_dir, setup, opts


def _resume_dir(opts: TuneOptions) -> str:
    """The folder to resume: a path, or a name under storage_path; it must hold a recbole_dsl search."""
    resume = str(opts.resume)
    exp_dir = os.path.abspath(os.path.expanduser(resume))
    if not os.path.isdir(exp_dir) and not os.path.isabs(resume):
        exp_dir = os.path.abspath(os.path.join(opts.storage_path, resume))
    setup_file = os.path.join(exp_dir, SETUP_FILE)
    if not os.path.isfile(setup_file):
        raise ConfigError("tune_resume", resume, "the folder of a search started by recbole_dsl",
                          hint=f"{setup_file} does not exist")
    return exp_dir


def _resumed_search(opts: TuneOptions, space_given: bool, out) -> Tuple[str, Dict[str, Any], TuneOptions]:
    """The folder, setup and options of the interrupted search opts.resume names: a resume runs
    the search that was started, whatever space or search options this call gives."""
    exp_dir = _resume_dir(opts)
    with open(os.path.join(exp_dir, SETUP_FILE), "rb") as f:
        saved = pickle.load(f)
    if space_given or opts.gives_space_options:
        print("resuming: the space and search options are those of the interrupted search", file=out)
    return exp_dir, saved["setup"], opts.resumed(saved["options"])


# ----------------------------------------------------------------------------------------------
# Ray

def _pythonpath_env() -> Dict[str, str]:
    """Ray workers get the driver's cwd and script folder on sys.path, not the whole sys.path:
    make sure they import this recbole_dsl (a source checkout need not be installed)."""
    pkg_parent = str(Path(__file__).resolve().parents[2])
    parts = [pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}


@dataclass(frozen=True)
class RaySession:
    """The Ray run_tune connected to (address) or started (local): what it shuts down after the search."""

    local: bool
    token: Optional[str] = None         # SESSION_ENV's value in the environment of its processes
    session_dir: Optional[str] = None   # Ray's folder of the session (logs, sockets)

    def live_processes(self) -> List[processes.RayProcess]:
        """The live processes of this local session (none for a cluster joined by address)."""
        if not self.local:
            return []
        return processes.ray_processes(env=f"{SESSION_ENV}={self.token}", folder=self.session_dir)


def _session_dir() -> Optional[str]:
    try:
        import ray

        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - private API: the environment token still names the processes
        return None


def _init_ray(address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[float],
              temp_dir: Optional[str], verbose: int) -> Optional[RaySession]:
    """Start (or connect to) Ray; the session to give to _shutdown_ray, or None when Ray was
    already initialised (whoever did it shuts it down)."""
    import ray

    if ray.is_initialized():
        return None
    kw = dict(log_to_driver=verbose >= 2, runtime_env={"env_vars": _pythonpath_env()},
              logging_level=logging.WARNING if verbose < 2 else logging.INFO)
    with preserved_env("CUDA_VISIBLE_DEVICES", MEMORY_MONITOR, SESSION_ENV):
        if address:
            ray.init(address=address, **kw)
            return RaySession(local=False)
        # Ray's memory monitor kills a worker when the node passes 95% memory (whoever uses
        # it), and Ray Tune 2.6 then aborts the whole search instead of failing one trial
        # (OutOfMemoryError is neither a task nor an actor error to it). The local Ray we
        # start leaves out-of-memory to the kernel, unless the user set the variable.
        os.environ.setdefault(MEMORY_MONITOR, "0")
        session = RaySession(local=True, token=f"{os.getpid()}-{time.time_ns()}")
        os.environ[SESSION_ENV] = session.token
        for attempt in range(2):
            try:
                # address="local": a new local instance even when RAY_ADDRESS or a (possibly stale)
                # /tmp/ray/ray_current_cluster names another cluster; joining one is --tune_address's job.
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                         _temp_dir=temp_dir, **kw)
                break
            except BaseException as e:
                _shutdown_ray(session)  # what a half-started Ray had started
                if attempt == 0 and _port_clash(e):
                    log.info("ray.init picked one port twice; starting it again: %s", str(e).splitlines()[0])
                    continue
                raise
    return dataclasses.replace(session, session_dir=_session_dir())


def _port_clash(e: BaseException) -> bool:
    """Ray 2.6 draws some ports at random without avoiding its fixed defaults (e.g. its metrics
    export port can draw 52365, the dashboard agent's HTTP port) and then refuses the clash:
    a new draw, a second ray.init, does not clash."""
    return isinstance(e, ValueError) and "used by other components" in str(e)


def _shutdown_ray(session: RaySession) -> None:
    """ray.shutdown(), then, for a local Ray, wait for every process of its session to exit and
    stop the stragglers: ray.shutdown stops only the processes ray.init started itself, and the
    raylet's own children (the dashboard agent, the workers) go a few seconds later, orphaned."""
    import ray

    running = session.live_processes()  # while the raylet lives, its children are easy to name
    try:
        ray.shutdown()
    finally:
        if session.local:
            stopped = processes.stop_session(session.live_processes, running)
            if stopped:
                log.debug("stopped Ray processes the local session left: %s", "; ".join(map(str, stopped)))


def _trainable(setup, cpus, gpus):
    """The trial function with the setup bound and the resources Ray reserves for each trial."""
    from ray import tune

    fn = tune.with_parameters(recbole_trial, setup=setup)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def _tune_config(setup, opts: TuneOptions):
    """What to optimise and how to pick the trials (search algorithm, scheduler, concurrency)."""
    from ray import tune

    return tune.TuneConfig(
        metric="best_valid_score", mode="max" if setup["bigger"] else "min", num_samples=opts.num_samples,
        search_alg=_search_alg(opts, setup["seed"]),
        scheduler=_scheduler(opts, setup["max_epochs"]),
        # grid and random get the limit through their generator (_search_alg)
        max_concurrent_trials=None if opts.search_alg in ("grid", "random") else opts.max_concurrent_trials,
        reuse_actors=False,
    )


def _run_config(exp_dir: str, opts: TuneOptions):
    """Where Ray keeps the search (exp_dir), how much it prints; a failed trial is not retried
    and Ray keeps no checkpoints (the trials save RecBole's own)."""
    from ray import air

    return air.RunConfig(
        name=os.path.basename(exp_dir), storage_path=os.path.dirname(exp_dir), verbose=min(opts.verbose, 2),
        failure_config=air.FailureConfig(max_failures=0, fail_fast=False),
        checkpoint_config=air.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False),
    )


def _new_tuner(exp_dir: str, setup, opts: TuneOptions):
    """A Ray Tuner for a new search of the setup's space."""
    from ray import tune

    sp = parse_space(setup["space"], setup["space_source"])
    # With ASHA the grid runs in a shuffled (seeded) order: ASHA stops a trial only when it lags
    # behind trials already past the same rung, so a grid listed from worst to best (small
    # temperatures first, say) would never stop anything.
    shuffle_seed = (setup["seed"] or 0) if opts.scheduler == "asha" else None
    return tune.Tuner(
        _trainable(setup, opts.cpus_per_trial, opts.gpus_per_trial),
        param_space=sp.param_space(grid_as_choice=opts.search_alg != "grid", shuffle_seed=shuffle_seed),
        tune_config=_tune_config(setup, opts),
        run_config=_run_config(exp_dir, opts),
    )


def _restored_tuner(exp_dir: str, setup, opts: TuneOptions):
    """The Ray Tuner of an interrupted search: finished trials are kept, unfinished ones rerun,
    failed ones only with retry_errored."""
    from ray import tune

    if not tune.Tuner.can_restore(exp_dir):
        raise ConfigError("tune_resume", exp_dir, "a search Ray saved state for",
                          hint="no experiment state found (it stopped before its first trial started)")
    return tune.Tuner.restore(exp_dir, trainable=_trainable(setup, opts.cpus_per_trial, opts.gpus_per_trial),
                              resume_unfinished=True, resume_errored=False, restart_errored=opts.retry_errored)


def _fit(tuner, exp_dir: str):
    """Run the trials. Ray Tune stopping the whole search becomes a SearchAborted that says why
    and how to continue, since Ray has saved its state by then."""
    try:
        return tuner.fit()
    except Exception as e:  # noqa: BLE001 - re-raised with what to do next
        raise SearchAborted(
            f"the search stopped: {_abort_reason(e)}. Ray saves its state as it goes; continue it with "
            f"python run_recbole_dsl.py --tune_resume={exp_dir}"
        ) from e


def _abort_reason(e: BaseException) -> str:
    """Ray's memory monitor surfaces as an unrelated-looking error: name it, else show the error."""
    chain, c = [], e
    while c is not None and len(chain) < 10:
        chain.append(type(c).__name__)
        c = c.__cause__ or c.__context__
    if "OutOfMemoryError" in chain:
        return ("Ray's memory monitor killed a trial (the node ran out of memory), which Ray Tune "
                "2.6 cannot treat as one failed trial")
    return f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------
# results

def _error_line(trial) -> str:
    """One line for a failed trial's row: the last line of its traceback (exception and message)."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and os.path.isfile(path):
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    elif getattr(trial, "error_msg", None):
        text = trial.error_msg
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else "error (see the trial's error.txt)"


def _saved_statuses(exp_dir) -> Dict[str, str]:
    """Trial statuses as Ray saved them for resuming: after Ctrl+C, Ray stops the running trials
    (TERMINATED in memory) but saves them as PENDING, to be rerun by a resume."""
    try:
        from ray.tune import ExperimentAnalysis

        return {t.trial_id: t.status for t in ExperimentAnalysis(exp_dir).trials}
    except Exception:  # noqa: BLE001 - no state saved yet
        return {}


def _status(trial, last_result: Mapping[str, Any], saved_status: Optional[str]) -> str:
    """finished, stopped early, error or not finished: what the user needs, not Ray's states."""
    from ray.tune.experiment import Trial

    if saved_status in (Trial.PENDING, Trial.RUNNING, Trial.PAUSED):
        return "not finished"
    if trial.status == Trial.ERROR:
        return "error"
    if trial.status == Trial.TERMINATED:
        # Ray marks a trial its scheduler stopped as done too: the trial says itself whether
        # its last report was its last evaluation (end of training or RecBole's early stopping).
        return "finished" if last_result.get("final") else "stopped early"
    return "not finished"


def _row(trial, setup, status: str) -> Dict[str, Any]:
    """A trial's line of trials.csv (plus _checkpoint and _node_id, which the final test needs)."""
    from ray.tune.experiment import Trial

    m = setup["metric"]
    res = dict(trial.last_result or {})
    params = {k: _plain(trial.config.get(k)) for k in setup["searched"]}
    row = {"trial_id": trial.trial_id, "status": status, **params,
           f"best valid {m}": res.get("best_valid_score") if "best_valid_score" in res else None,
           "best_epoch": res.get("best_epoch"),
           "epochs": res.get("epoch"),
           f"last valid {m}": res.get("valid_score"),
           "node": (res.get("node_id") or "")[:8] or None,
           "threads": res.get("threads"),
           "device": res.get("device"),
           "time_s": round(float(res["time_total_s"]), 1) if "time_total_s" in res else None,
           "error": _error_line(trial) if trial.status == Trial.ERROR else None,
           "trial_dir": trial.local_path}
    for k, v in res.items():
        if k.startswith("best_valid_") and k != "best_valid_score":
            row[k.replace("best_valid_", "best valid ")] = v
    row["_checkpoint"] = res.get("checkpoint")
    row["_node_id"] = res.get("node_id")
    return row


def _collect(result_grid, setup, exp_dir, expected: int) -> Tuple[List[Dict[str, Any]], bool]:
    """One row per trial, and whether the search was interrupted (fewer trials than expected,
    or some not finished)."""
    trials = list(result_grid._experiment_analysis.trials)
    saved = _saved_statuses(exp_dir)
    rows = [_row(t, setup, _status(t, t.last_result or {}, saved.get(t.trial_id))) for t in trials]
    interrupted = len(trials) < expected or any(r["status"] == "not finished" for r in rows)
    return rows, interrupted


def _expected_trials(setup, opts: TuneOptions) -> int:
    """How many trials a complete search has: num_samples, times the grid's size for a grid search."""
    per_sample = parse_space(setup["space"]).grid_size() if opts.search_alg == "grid" else 1
    return opts.num_samples * per_sample


def _columns(rows, setup) -> List[str]:
    """trials.csv's columns: the searched keys and the validation metric first."""
    m = setup["metric"]
    cols = ["trial_id", "status"] + list(setup["searched"]) + [f"best valid {m}"]
    extra = sorted({k for r in rows for k in r if k.startswith("best valid ") and k != f"best valid {m}"})
    cols += extra + ["best_epoch", "epochs", f"last valid {m}", "node", "threads", "device", "time_s", "error", "trial_dir"]
    return cols


def _result(result_grid, setup, opts: TuneOptions, exp_dir: str) -> TuneResult:
    """The search's outcome as run_tune returns it, rows sorted best first; no file written yet."""
    m = setup["metric"]
    rows, interrupted = _collect(result_grid, setup, exp_dir, _expected_trials(setup, opts))
    rows = rpt.sort_rows(rows, f"best valid {m}", setup["bigger"])
    result = TuneResult(path=exp_dir, rows=rows, columns=_columns(rows, setup), metric=m, interrupted=interrupted)
    result.num_errors = sum(r["status"] == "error" for r in rows)
    result.epochs_total = int(sum(r.get("epochs") or 0 for r in rows))
    result.csv_path = os.path.join(exp_dir, "trials.csv")
    if interrupted:
        result.resume_command = f"python run_recbole_dsl.py --tune_resume={exp_dir}"
    return result


def _scored_rows(result: TuneResult) -> List[Dict[str, Any]]:
    """The trials with a finite validation score, best first: the ones the plot and the choice use."""
    key = f"best valid {result.metric}"
    return [r for r in result.rows if isinstance(r.get(key), (int, float))
            and math.isfinite(r[key]) and r["status"] != "error"]


def _write_csv(path, rows, columns):
    """trials.csv: every trial, failed ones too, in the order of the table."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})


def _write_plot(result: TuneResult, setup, scored: List[Dict[str, Any]]) -> None:
    """valid_vs_<key>.svg when a searched key can be an x axis (sets result.plot_path)."""
    m = result.metric
    x_key = rpt.plot_x_key(setup["searched"], scored)
    if not (x_key and scored):
        return
    series = rpt.series_keys(setup["searched"], scored, x_key)
    result.plot_path = os.path.join(result.path, f"valid_vs_{x_key}.svg")
    with open(result.plot_path, "w", encoding="utf-8") as f:
        f.write(rpt.svg_plot(scored, x_key, f"best valid {m}", f"validation {m}", series,
                             f"{os.path.basename(result.path)}: validation {m} vs {x_key}"))


def _best_trial(best_row, setup, opts: TuneOptions, exp_dir: str) -> Dict[str, Any]:
    """result.best: the chosen trial's parameters and validation scores, and its test scores
    when opts.test_best (computed here, once, for this configuration only)."""
    m = setup["metric"]
    params = {k: best_row[k] for k in setup["searched"] if k in best_row}
    best = {"trial_id": best_row["trial_id"], "params": params,
            "best_valid_score": best_row[f"best valid {m}"], "best_epoch": best_row["best_epoch"],
            "valid": {k.replace("best valid ", ""): v for k, v in best_row.items() if k.startswith("best valid ")},
            "test": None}
    if opts.test_best:
        evaluated = _final_test(setup, best_row, exp_dir, opts.cpus_per_trial, opts.gpus_per_trial)
        if evaluated:
            best["test"] = evaluated["test"]
            best["valid_check"] = evaluated["valid"]
    return best


def _final_test(setup, best_row, exp_dir, cpus, gpus) -> Optional[Dict[str, Any]]:
    """Score the best trial's checkpoint on validation and test, in a Ray task with a trial's
    resources; None when the checkpoint is on another node of the cluster."""
    import ray

    trial_dir = best_row.get("trial_dir")
    ckpt = best_row.get("_checkpoint")
    path = os.path.join(trial_dir, ckpt) if trial_dir and ckpt else None
    if not path or not os.path.isfile(path):
        log.warning("best trial's checkpoint %s is not on this machine: test metrics skipped", path)
        return None
    with open(path, "rb") as f:
        data = f.read()
    params = {k: best_row[k] for k in setup["searched"] if k in best_row}
    task = ray.remote(evaluate_best).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    return ray.get(task.remote(setup, params, data, os.path.join(exp_dir, "best_test")))


def _best_config(setup, params) -> Dict[str, Any]:
    """The full configuration of the best trial, as run_recbole_dsl.py --config_files= reads it."""
    cfg = dict(setup["config_dict"])
    cfg.update({k: v for k, v in params.items() if k not in CONFIG_ARGS})
    model = params.get("model", setup["model"])
    dataset = params.get("dataset", setup["dataset"])
    return {"model": model, "dataset": dataset, **_plain(cfg)}


def _header(setup, best, exp_dir) -> List[str]:
    """best_config.yaml's comment: where it comes from, its scores and how to rerun it."""
    m = setup["metric"]
    cmd = f"python run_recbole_dsl.py --config_files={os.path.join(exp_dir, 'best_config.yaml')}"
    lines = [
        f"Best configuration of the search {os.path.basename(exp_dir)} (trial {best['trial_id']}),",
        f"chosen on validation {m} = {best['best_valid_score']:.4f} (epoch {best['best_epoch']}).",
    ]
    if best.get("test"):
        shown = ", ".join(f"{k} = {v:.4f}" for k, v in best["test"].items())
        lines.append(f"Test of this configuration only (computed once, after the search): {shown}")
    lines.append(f"Rerun: {cmd}")
    return lines


def _write_best_config(result: TuneResult, setup) -> None:
    """best_config.yaml for result.best (sets result.best_config and result.best_config_path)."""
    result.best_config = _best_config(setup, result.best["params"])
    result.best_config_path = os.path.join(result.path, "best_config.yaml")
    with open(result.best_config_path, "w", encoding="utf-8") as f:
        f.write(rpt.best_config_yaml(result.best_config, _header(setup, result.best, result.path)))


# ----------------------------------------------------------------------------------------------
# the API

def run_tune(space: Union[str, os.PathLike, Mapping, SearchSpace, None] = None, model: Optional[str] = None,
             dataset: Optional[str] = None, config_file_list: Optional[Sequence[str]] = None,
             config_dict: Optional[Mapping[str, Any]] = None, cmd_args: Sequence[str] = (), *,
             num_samples: Optional[int] = None, search_alg: Optional[str] = None,
             scheduler: Optional[str] = None, grace_period: Optional[int] = None,
             reduction_factor: Optional[float] = None, startup_trials: Optional[int] = None,
             cpus_per_trial: float = 1, gpus_per_trial: float = 0, max_concurrent_trials: Optional[int] = None,
             address: Optional[str] = None, storage_path: Union[str, os.PathLike] = DEFAULT_STORAGE,
             name: Optional[str] = None, resume: Union[str, os.PathLike, None] = None,
             retry_errored: bool = False, verbose: int = 1, num_cpus: Optional[int] = None,
             ray_temp_dir: Optional[str] = None, test_best: bool = True,
             quick_start_defaults: bool = True, out=None, options: Optional[TuneOptions] = None) -> TuneResult:
    """Search `space` with Ray Tune; see docs/tuning.md.

    space: a YAML file, a dict in the same format, or a SearchSpace. model/dataset/config_file_list/
    config_dict/cmd_args: as for run_recbole_dsl (the space's values win over files and dict; a key
    both on the command line and in the space is an error). search_alg: grid | random | optuna |
    hyperopt (startup_trials: their random trials before the model guides, default 10 / 20);
    scheduler: fifo | asha (grace_period, reduction_factor in epochs). address: None
    starts a local Ray (num_cpus, ray_temp_dir), 'auto' or 'host:port' joins a running cluster.
    resume: the folder of an interrupted search to continue (finished trials are kept).
    options: a TuneOptions holding the keyword arguments from num_samples to test_best, instead
    of them. Returns a TuneResult; raises ConfigError before any trial starts when the space or
    an option is invalid.
    """
    call = locals()  # first statement: exactly the arguments, TuneOptions' fields among them
    opts = _call_options(options, {f.name: call[f.name] for f in dataclasses.fields(TuneOptions)})
    out = out or sys.stdout
    t0 = time.time()
    if opts.resume is not None:
        exp_dir, setup, opts = _resumed_search(opts, space is not None, out)
    else:
        exp_dir, setup, opts = _new_search(space, opts, model, dataset, config_file_list, config_dict,
                                           cmd_args, quick_start_defaults)
    setup = _trial_setup(setup, opts)
    session = _init_ray(opts.address, opts.num_cpus, None, opts.ray_temp_dir, opts.verbose)
    try:
        tuner = (_restored_tuner if opts.resume is not None else _new_tuner)(exp_dir, setup, opts)
        print(f"recbole_dsl tune: {exp_dir}", file=out)
        result = _result(_fit(tuner, exp_dir), setup, opts, exp_dir)
        scored = _scored_rows(result)
        _write_csv(result.csv_path, result.rows, result.columns)
        _write_plot(result, setup, scored)
        if scored and not result.interrupted:
            result.best = _best_trial(scored[0], setup, opts, exp_dir)
            _write_best_config(result, setup)
        result.wall_time_s = time.time() - t0
        result.summary = summarize(result, setup)
        print(result.summary, file=out)
        return result
    finally:
        if session is not None:
            _shutdown_ray(session)


def summarize(result: TuneResult, setup) -> str:
    """The text run_tune prints at the end: the sorted table, counts, failures, files, the choice."""
    m = result.metric
    shown = [c for c in result.columns if c not in ("trial_dir", "device", "threads")
             and any(r.get(c) not in (None, "") for r in result.rows)]
    lines = ["", f"Trials sorted by validation {m} (best epoch of each trial):",
             rpt.format_table(result.rows, shown), ""]
    n = len(result.rows)
    lines.append(f"{n} trials: {sum(r['status'] == 'finished' for r in result.rows)} finished, "
                 f"{sum(r['status'] == 'stopped early' for r in result.rows)} stopped early, "
                 f"{result.num_errors} failed, {sum(r['status'] == 'not finished' for r in result.rows)} not finished; "
                 f"{result.epochs_total} epochs in all.")
    for r in result.rows:
        if r["status"] == "error":
            lines.append(f"  trial {r['trial_id']} failed: {r['error']}")
    lines.append(f"all trials:   {result.csv_path}")
    if result.plot_path:
        lines.append(f"plot:         {result.plot_path}")
    if result.interrupted:
        lines.append("The search was interrupted before all trials finished; continue it with")
        lines.append(f"  {result.resume_command}")
    elif result.best:
        b = result.best
        lines.append(f"best config:  {result.best_config_path}")
        lines.append("best:         " + ", ".join(f"{k}={v}" for k, v in b["params"].items())
                     + f"  (trial {b['trial_id']}, validation {m} {b['best_valid_score']:.4f} at epoch {b['best_epoch']})")
        if b.get("test"):
            lines.append("test:         " + ", ".join(f"{k}: {v:.4f}" for k, v in b["test"].items())
                         + "  (best configuration only, computed after the search)")
    else:
        lines.append("No trial produced a validation result: nothing to choose.")
    return "\n".join(lines)
