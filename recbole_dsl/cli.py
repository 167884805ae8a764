"""`run_recbole_dsl.py` / `recbole-dsl`: RecBole's run_recbole.py command line, with the plugin.

With --tune=SPACE.yaml (or --tune_resume=FOLDER) it runs a Ray Tune search instead of one run.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from recbole_dsl.checkpoint import UnsafeCheckpointError
from recbole_dsl.errors import ConfigError, TrainingDiverged
from recbole_dsl.tune.runner import SCHEDULERS, SEARCH_ALGS, run_tune

# run_tune's defaults, which are the command line's too.
RUN_TUNE_DEFAULTS = {name: p.default for name, p in inspect.signature(run_tune).parameters.items()}


@dataclass(frozen=True)
class TuneOption:
    """One search option of the command line, and the run_tune keyword it sets.

    argparse reads it as --flag (dest: the flag without its dashes); its default is run_tune's
    default for the keyword, so the command line and the Python API cannot disagree on one.
    """

    flag: str
    keyword: str                            # run_tune's parameter
    help: str
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Sequence[Any]] = None
    action: Optional[str] = None            # "store_true": a switch
    metavar: Optional[str] = None
    negated: bool = False                   # the switch turns the keyword off (--tune_no_test)
    starts_search: bool = False             # --tune, --tune_resume: the other options need one of them

    @property
    def dest(self) -> str:
        """argparse's attribute for it (its flag without the dashes)."""
        return self.flag[2:]

    @property
    def default(self) -> Any:
        """run_tune's default, as the command line reads it (a negated switch is off by default)."""
        value = RUN_TUNE_DEFAULTS[self.keyword]
        return (not value) if self.negated else value

    def add_to(self, group) -> None:
        """Declare the option to argparse."""
        given = {"type": self.type, "choices": self.choices, "action": self.action, "metavar": self.metavar}
        group.add_argument(self.flag, default=self.default, help=self.help,
                           **{k: v for k, v in given.items() if v is not None})

    def given(self, args) -> bool:
        """Whether the command line set it (to something else than its default)."""
        return getattr(args, self.dest) != self.default

    def keyword_value(self, args) -> Any:
        """The value run_tune gets for it."""
        value = getattr(args, self.dest)
        return (not value) if self.negated else value


TUNE_OPTIONS = (
    TuneOption("--tune", "space", metavar="SPACE.yaml", starts_search=True,
               help="search the space in this YAML file (Ray Tune samplers over config keys) instead of one run"),
    TuneOption("--tune_samples", "num_samples", type=int,
               help="trials to draw (grid: repetitions of the grid; default 1, else 10)"),
    TuneOption("--tune_search", "search_alg", choices=SEARCH_ALGS, help="search algorithm (default grid)"),
    TuneOption("--tune_scheduler", "scheduler", choices=SCHEDULERS,
               help="fifo runs every trial to its end; asha stops trials whose validation metric lags (default fifo)"),
    TuneOption("--tune_grace_period", "grace_period", type=int,
               help="ASHA: epochs every trial runs before it can be stopped (5)"),
    TuneOption("--tune_reduction_factor", "reduction_factor", type=float,
               help="ASHA: keep 1/this of the trials at each rung (2)"),
    TuneOption("--tune_startup_trials", "startup_trials", type=int,
               help="optuna / hyperopt: random trials before the search's model guides it (10 / 20)"),
    TuneOption("--tune_cpus", "cpus_per_trial", type=float, help="CPUs per trial; torch uses as many threads (1)"),
    TuneOption("--tune_gpus", "gpus_per_trial", type=float, help="GPUs per trial, assigned by Ray (0)"),
    TuneOption("--tune_max_concurrent", "max_concurrent_trials", type=int,
               help="at most this many trials at once (default: as resources allow)"),
    TuneOption("--tune_address", "address",
               help="join a running Ray cluster: 'auto' or host:port (default: start Ray locally)"),
    TuneOption("--tune_num_cpus", "num_cpus", type=int, help="CPUs of the local Ray (default: all)"),
    TuneOption("--tune_dir", "storage_path", help="folder of the searches' results (./ray_results)"),
    TuneOption("--tune_name", "name", help="name of this search's folder (default: <space>-<model>-<dataset>-<time>)"),
    TuneOption("--tune_resume", "resume", metavar="FOLDER", starts_search=True,
               help="continue an interrupted search; finished trials are kept"),
    TuneOption("--tune_retry_errored", "retry_errored", action="store_true",
               help="with --tune_resume: rerun failed trials too"),
    TuneOption("--tune_verbose", "verbose", type=int, choices=(0, 1, 2),
               help="0 quiet, 1 Ray's status table (default), 2 also every result and the trials' logs"),
    TuneOption("--tune_no_test", "test_best", action="store_true", negated=True,
               help="do not score the best configuration on test"),
)


def searching(args) -> bool:
    """Whether this command line runs a search (--tune or --tune_resume) rather than one run."""
    return any(o.given(args) for o in TUNE_OPTIONS if o.starts_search)


def parse(argv):
    """(options, config files, the other --key=value settings); exits 2 on a malformed command line."""
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
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue training from this checkpoint (e.g. the -interrupted.pth a Ctrl+C left), "
                        "with the same settings as the run that wrote it")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="unpickle whole checkpoint files (only files from someone you trust); by default "
                        "only what RecBole and plugin checkpoints hold is read")
    g = p.add_argument_group("search with Ray Tune (docs/tuning.md)")
    for option in TUNE_OPTIONS:
        option.add_to(g)
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and len(a[2:].split("=")) == 2)]
    if bad:
        p.error(f"unrecognised arguments {bad}: other settings are given as --key=value")
    if not searching(args):
        used = [o.flag for o in TUNE_OPTIONS if not o.starts_search and o.given(args)]
        if used:
            p.error(f"{', '.join(used)} need{'s' if len(used) == 1 else ''} --tune=SPACE.yaml (or --tune_resume=FOLDER)")
    if searching(args) and args.resume:
        p.error("--resume continues one run; a search continues with --tune_resume=FOLDER")
    if args.trust_checkpoint:
        rest = rest + ["--trust_checkpoint=True"]
    files = args.config_files.strip().split(" ") if args.config_files else None
    return args, files, rest


def _tune(args, files, rest) -> int:
    """Run the search the command line describes; the exit code says whether it chose a configuration."""
    result = run_tune(model=args.model, dataset=args.dataset, config_file_list=files, cmd_args=rest,
                      **{o.keyword: o.keyword_value(args) for o in TUNE_OPTIONS})
    if result.interrupted:
        return 130
    return 0 if result.best else 1


def _resume_hint(argv) -> str:
    """How to continue the interrupted run: its command line with --resume at the saved state."""
    from recbole_dsl.trainer import RecLossTrainer

    path = RecLossTrainer.last_interrupted_checkpoint
    if path is None:
        return " (nothing was saved)"
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--resume="):
            skip = False
            continue
        skip = a == "--resume"
        if not skip:
            kept.append(a)
    return f"; the state reached is in {path}. Continue with: run_recbole_dsl.py {' '.join(kept + ['--resume=' + path])}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, files, rest = parse(argv)
    try:
        if searching(args):
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
        from recbole_dsl.quick_start import DistributedRunError, run
        from recbole_dsl.sources import key_from_sources

        model = args.model or key_from_sources("model", files, None, rest, "BPR")
        dataset = args.dataset or key_from_sources("dataset", files, None, rest, "ml-100k")
        try:
            result = run(model=model, dataset=dataset, config_file_list=files, cmd_args=rest, resume_file=args.resume)
        except DistributedRunError as e:
            print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
            return 1
    except (ConfigError, FileNotFoundError, UnsafeCheckpointError) as e:
        print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"run_recbole_dsl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_recbole_dsl: interrupted" + _resume_hint(argv), file=sys.stderr)
        return 130
    for split, res in (("valid", result["best_valid_result"]), ("test", result["test_result"])):
        shown = ", ".join(f"{k}: {v:.4f}" for k, v in (res or {}).items())
        print(f"{split}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
