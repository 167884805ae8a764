"""`run_recbole_dsl.py` / `recbole-dsl`: RecBole's run_recbole.py command line, with the plugin.

With --tune=SPACE.yaml (or --tune_resume=FOLDER) it runs a Ray Tune search instead of one run.
"""
from __future__ import annotations

import argparse
import sys

from recbole_dsl.errors import ConfigError

# The search options (dest, default); all but --tune and --tune_resume need one of those two.
TUNE_OPTIONS = {
    "tune_samples": None, "tune_search": None, "tune_scheduler": None, "tune_grace_period": None,
    "tune_reduction_factor": None, "tune_cpus": 1.0, "tune_gpus": 0.0, "tune_max_concurrent": None,
    "tune_address": None, "tune_num_cpus": None, "tune_dir": "ray_results", "tune_name": None,
    "tune_retry_errored": False, "tune_verbose": 1, "tune_no_test": False,
}


def parse(argv):
    p = argparse.ArgumentParser(
        prog="run_recbole_dsl.py",
        description="Train a RecBole general model with a softmax-family loss (rec_loss). "
                    "Any other RecBole or plugin key is given as --key=value.",
    )
    p.add_argument("--model", "-m", default=None,
                   help="RecBole model name (default: the config files' `model`, else BPR, i.e. MF)")
    p.add_argument("--dataset", "-d", default=None,
                   help="dataset name (default: the config files' `dataset`, else the bundled ml-100k)")
    p.add_argument("--config_files", default=None, help="space-separated YAML files, later ones win")
    g = p.add_argument_group("search with Ray Tune (README.md, section Tuning)")
    g.add_argument("--tune", metavar="SPACE.yaml", default=None,
                   help="search the space in this YAML file (Ray Tune samplers over config keys) instead of one run")
    g.add_argument("--tune_samples", type=int, help="trials to draw (grid: repetitions of the grid; default 1, else 10)")
    g.add_argument("--tune_search", choices=["grid", "random", "optuna", "hyperopt"],
                   help="search algorithm (default grid)")
    g.add_argument("--tune_scheduler", choices=["fifo", "asha"], help="fifo runs every trial to its end; "
                   "asha stops trials whose validation metric lags (default fifo)")
    g.add_argument("--tune_grace_period", type=int, help="ASHA: epochs every trial runs before it can be stopped (5)")
    g.add_argument("--tune_reduction_factor", type=float, help="ASHA: keep 1/this of the trials at each rung (2)")
    g.add_argument("--tune_cpus", type=float, default=1.0, help="CPUs per trial; torch uses as many threads (1)")
    g.add_argument("--tune_gpus", type=float, default=0.0, help="GPUs per trial, assigned by Ray (0)")
    g.add_argument("--tune_max_concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    g.add_argument("--tune_address", help="join a running Ray cluster: 'auto' or host:port (default: start Ray locally)")
    g.add_argument("--tune_num_cpus", type=int, help="CPUs of the local Ray (default: all)")
    g.add_argument("--tune_dir", default="ray_results", help="folder of the searches' results (./ray_results)")
    g.add_argument("--tune_name", help="name of this search's folder (default: <space>-<model>-<dataset>-<time>)")
    g.add_argument("--tune_resume", metavar="FOLDER", help="continue an interrupted search; finished trials are kept")
    g.add_argument("--tune_retry_errored", action="store_true", help="with --tune_resume: rerun failed trials too")
    g.add_argument("--tune_verbose", type=int, choices=[0, 1, 2], default=1,
                   help="0 quiet, 1 Ray's status table (default), 2 also every result and the trials' logs")
    g.add_argument("--tune_no_test", action="store_true", help="do not score the best configuration on test")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and len(a[2:].split("=")) == 2)]
    if bad:
        p.error(f"unrecognised arguments {bad}: other settings are given as --key=value")
    if args.tune is None and args.tune_resume is None:
        used = [f"--{k}" for k, d in TUNE_OPTIONS.items() if getattr(args, k) != d]
        if used:
            p.error(f"{', '.join(used)} need --tune=SPACE.yaml (or --tune_resume=FOLDER)")
    files = args.config_files.strip().split(" ") if args.config_files else None
    return args, files, rest


def _tune(args, files, rest) -> int:
    from recbole_dsl.tune import run_tune

    result = run_tune(
        args.tune, model=args.model, dataset=args.dataset, config_file_list=files, cmd_args=rest,
        num_samples=args.tune_samples, search_alg=args.tune_search, scheduler=args.tune_scheduler,
        grace_period=args.tune_grace_period, reduction_factor=args.tune_reduction_factor,
        cpus_per_trial=args.tune_cpus, gpus_per_trial=args.tune_gpus,
        max_concurrent_trials=args.tune_max_concurrent, address=args.tune_address,
        num_cpus=args.tune_num_cpus, storage_path=args.tune_dir, name=args.tune_name,
        resume=args.tune_resume, retry_errored=args.tune_retry_errored, verbose=args.tune_verbose,
        test_best=not args.tune_no_test,
    )
    if result.interrupted:
        return 130
    return 0 if result.best else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, files, rest = parse(argv)
    try:
        if args.tune is not None or args.tune_resume is not None:
            try:
                return _tune(args, files, rest)
            except RuntimeError as e:
                from recbole_dsl.tune.runner import SearchAborted

                if not isinstance(e, SearchAborted):
                    raise
                print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:  # a second Ctrl+C: Ray Tune had already saved the state
                print("run_recbole_dsl: interrupted; continue the search with --tune_resume=<its folder>",
                      file=sys.stderr)
                return 130
        from recbole_dsl.quick_start import run_recbole_dsl
        from recbole_dsl.tune.runner import key_from_sources

        model = args.model or key_from_sources("model", files, None, rest, "BPR")
        dataset = args.dataset or key_from_sources("dataset", files, None, rest, "ml-100k")
        result = run_recbole_dsl(model=model, dataset=dataset, config_file_list=files, cmd_args=rest)
    except (ConfigError, FileNotFoundError) as e:
        print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
        return 2
    for split, res in (("valid", result["best_valid_result"]), ("test", result["test_result"])):
        shown = ", ".join(f"{k}: {v:.4f}" for k, v in (res or {}).items())
        print(f"{split}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
