"""Scale benchmark: seconds per training epoch and peak memory of RecBole's own models and of the
plugin's losses and samplers, on Gowalla and on synthetic datasets of 1M to 10M interactions.

Every run is one entry of RUNS below (its dataset, model and settings) and executes in a fresh
subprocess (``--one NAME``), so its peak resident memory (VmHWM) is its own; the child builds
data and model, times ``--epochs`` training epochs (s/epoch: the median of the epochs after the
first with 3 or more epochs, else the last one), optionally one full-sort evaluation of the
validation split (``--eval``), and prints one JSON line. The parent appends each line to the
results file as soon as the run ends: a run already there for the same commit, ``--epochs``,
``--eval``, ``--threads`` and ``--gpu-id`` is skipped unless ``--rerun`` (so an interrupted
benchmark continues where it stopped; a run that timed out is retried under a longer
``--timeout``; a run that failed is recorded with its error and not retried at the same
commit), then prints a Markdown table of this commit's results. The commit is
``git rev-parse --short HEAD``, "-dirty" added when tracked files differ from it.

Groups:
- gowalla: MF (RecBole's BPR model class, batch 2048, d = 64, lr 1e-3) with RecBole's own BPR
  loss and sampler, and with the plugin's SL / DSL / BSL under several samplers; RecBole's
  LightGCN next to LightGCN + SL. Data: the shared split (../shared/data from the repository
  root, train / valid as RecBole's benchmark files).
- scale: training only on synthetic data (benchmarks/synth.py; Zipf 1.0 item popularity, about
  10 interactions per user), 1M / 3M / 10M interactions over 100k / 300k / 1M items and users:
  RecBole BPR, SL shared N=1000, SL uniform N=256. Split: RS 98/1/1 over all interactions
  (group_by none: RecBole's per-user split would hold out 2 of a 10-interaction user's items and
  train on 80%; it also loops over every interaction in Python), no filtering.
- smoke: a 20k-interaction synthetic set, RecBole BPR and SL uniform N=16 (tests the harness).

Ratios: each run's s/epoch and peak RSS over its base run's (the same data's RecBole BPR run;
LightGCN and SGL runs: RecBole's own of that model). The numbers are only meaningful on an otherwise idle machine.
Peak RSS includes data loading (RecBole's, 4.6 GB at 10M interactions); load_peak_rss_mib in the
results file is the peak before training. Budget: every run steps Adam over the dense embedding
tables, so a CPU step costs time in proportion to users + items (2 cores: ~0.03 s at Gowalla's 71k
rows, ~0.8 s at synth-10m's 1.8M rows, i.e. over an hour per 10M epoch of 4,786 batches, plus
RecBole's data loading, ~110 s at 10M): give the scale group a --timeout (and --epochs) to match,
or a GPU (--gpu-id 0). Threads: torch's default (all cores) is what a user gets, but on a machine
that is not idle its OpenMP threads wait on each other (2 busy cores: a smoke epoch took 2.6 s
with 2 threads, 0.06 s with --threads 1).

    python benchmarks/bench_scale.py --group gowalla|scale|smoke|all [--only NAME,...]
        [--epochs 2] [--eval] [--timeout 1800] [--results benchmarks/results/scale.jsonl]
        [--rerun] [--threads N] [--gpu-id 0] [--synth-dir /tmp/recbole_dsl_synth]
    python benchmarks/bench_scale.py --report [--group ...]   # the table only, from the results file
    python benchmarks/bench_scale.py --list                   # the run names
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import synth  # noqa: E402  (numpy only; torch and RecBole are imported by the child and the table)

SYNTH_DIR = "/tmp/recbole_dsl_synth"
RESULTS = HERE / "results" / "scale.jsonl"

GOWALLA = {"data_path": str(ROOT.parent / "shared" / "data"), "benchmark_filename": ["train", "valid", "valid"],
           "load_col": {"inter": ["user_id", "item_id"]}}
# Synthetic sets: train on (almost) all of it, no filtering.
SYNTH = {"load_col": {"inter": ["user_id", "item_id"]},
         "eval_args": {"split": {"RS": [0.98, 0.01, 0.01]}, "order": "RO", "group_by": "none", "mode": "full"},
         "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)"}
# The model settings every run shares (RecBole's defaults for everything else).
MF = {"train_batch_size": 2048, "embedding_size": 64, "learning_rate": 1e-3}


@dataclass(frozen=True)
class Data:
    name: str  # RecBole's dataset name
    synth: dict | None = None  # synth.ensure's sizes; None: Gowalla

    def settings(self, synth_dir: str) -> dict:
        return dict(GOWALLA) if self.synth is None else {**SYNTH, "data_path": synth_dir}

    def ensure(self, synth_dir: str, verbose=False) -> None:
        if self.synth is not None:
            synth.ensure(synth_dir, self.name, **self.synth, timestamps=False, verbose=verbose)


@dataclass(frozen=True)
class Run:
    name: str
    group: str
    data: Data
    model: str
    plugin: dict | None  # plugin keys (rec_loss, neg_sampler, ...); None: RecBole's own loss and sampler
    base: str  # the run the ratios are taken against
    kw: dict = field(default_factory=dict)


def _synth(name, users, items, inter):
    return Data(name, {"n_users": users, "n_items": items, "n_interactions": inter, "zipf": 1.0, "seed": 0})


def _sl(sampler, n=None, loss="SL", **extra):
    return {"rec_loss": loss, "neg_sampler": sampler, **({"neg_num": n} if n else {}), **extra}


# (short name, model, plugin keys or None)
MF_RUNS = [
    ("recbole-bpr", "BPR", None),
    ("sl-u256", "BPR", _sl("uniform", 256)),
    ("sl-u1000", "BPR", _sl("uniform", 1000)),
    ("sl-shared1000", "BPR", _sl("shared", 1000)),
    ("sl-inbatch", "BPR", _sl("in_batch")),
    # sparse_update: row-sparse gradients and lazy Adam (recbole_dsl/optim.py)
    ("sl-u256-sparse", "BPR", _sl("uniform", 256, sparse_update=True)),
    ("sl-shared1000-sparse", "BPR", _sl("shared", 1000, sparse_update=True)),
    ("sl-inbatch-sparse", "BPR", _sl("in_batch", sparse_update=True)),
    ("sl-all", "BPR", _sl("all")),  # the exact softmax over every item (its sampler may not exist yet)
    ("dsl-u256", "BPR", _sl("uniform", 256, "DSL")),
    ("psl-u256", "BPR", _sl("uniform", 256, "PSL")),
    # the papers' Gowalla rows' setting (bench_papers_gowalla.py): shared N = 1000, sparse_update
    ("dsl-shared1000-sparse", "BPR", _sl("shared", 1000, "DSL", sparse_update=True)),
    ("dsl-rw-shared1000-sparse", "BPR", _sl("shared", 1000, "DSL", sparse_update=True, dsl_temperature=False)),
    ("psl-shared1000-sparse", "BPR", _sl("shared", 1000, "PSL", sparse_update=True)),
    ("bsl-u256", "BPR", _sl("uniform", 256, "BSL", train_batch_mode="user", bsl_form="paper", bsl_group_positives=True)),
    ("recbole-lightgcn", "LightGCN", None),
    ("lightgcn-sl-u256", "LightGCN", _sl("uniform", 256)),
    # the plugin's propagation (CSR) with BPR's own loss shape: one uniform negative, positives rejected
    ("lightgcn-bpr1", "LightGCN", _sl("uniform", 1, "BPR")),
    ("lightgcn-sl-shared1000", "LightGCN", _sl("shared", 1000)),
    # SGL: three propagations a step (its training graph and two perturbed views)
    ("recbole-sgl", "SGL", None),
    ("sgl-sl-u256", "SGL", _sl("uniform", 256)),
]
SCALE_RUNS = [("recbole-bpr", "BPR", None), ("sl-shared1000", "BPR", _sl("shared", 1000)),
              ("sl-u256", "BPR", _sl("uniform", 256)),
              ("sl-shared1000-sparse", "BPR", _sl("shared", 1000, sparse_update=True)),
              ("sl-u256-sparse", "BPR", _sl("uniform", 256, sparse_update=True))]
SMOKE_RUNS = [("recbole-bpr", "BPR", None), ("sl-u16", "BPR", _sl("uniform", 16))]

GROUPS = {
    "gowalla": [(Data("gowalla"), MF_RUNS)],
    "scale": [(_synth("synth-1m", 100_000, 100_000, 1_000_000), SCALE_RUNS),
              (_synth("synth-3m", 300_000, 300_000, 3_000_000), SCALE_RUNS),
              (_synth("synth-10m", 1_000_000, 1_000_000, 10_000_000), SCALE_RUNS)],
    "smoke": [(_synth("synth-smoke", 2_000, 2_000, 20_000), SMOKE_RUNS)],
}
RUNS = [Run(f"{data.name}/{short}", group, data, model, plugin,
            f"{data.name}/recbole-{model.lower()}", dict(MF))
        for group, sets in GROUPS.items() for data, runs in sets for short, model, plugin in runs]
BY_NAME = {r.name: r for r in RUNS}


# --- the child: one run --------------------------------------------------------------------------

def _proc_status_mib(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


class Limited:
    """The first ``k`` batches of a training loader (every other attribute is the loader's), with
    the time its first batch was handed out (``first_at``): what comes before it is the epoch's
    start-up, paid once an epoch (RecBole's loader draws a permutation of every training row and
    turns it into a Python list: 0.5-0.7 s at 9.8M rows idle, up to 2.4 s under load), not once a batch."""

    def __init__(self, loader, k: int):
        self._loader, self._k = loader, k
        self.first_at = None

    def __iter__(self):
        self.first_at = None
        for i, batch in enumerate(itertools.islice(iter(self._loader), self._k)):
            if i == 0:
                self.first_at = time.perf_counter()
            yield batch

    def __len__(self):
        return self._k

    def __getattr__(self, name):
        return getattr(self._loader, name)


def one(run: Run, args) -> dict:
    """Build, train ``args.epochs`` epochs, optionally evaluate; the JSON record of the run."""
    rec = {"name": run.name}
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from common import plugin_run, recbole_run

        run.data.ensure(args.synth_dir)
        kw = {**run.data.settings(args.synth_dir), **run.kw, "epochs": args.epochs, "gpu_id": args.gpu_id}
        t = time.perf_counter()
        if run.plugin is None:
            cfg, net, trainer, (train, valid, test) = recbole_run(run.model, run.data.name, **kw)
        else:
            cfg, net, trainer, (train, valid, test) = plugin_run(run.model, run.data.name, **kw, **run.plugin)
        if cfg["train_batch_mode"] == "user":  # as RecLossTrainer.fit does
            from recbole_dsl.data import UserGroupedTrainDataLoader

            train = UserGroupedTrainDataLoader.wrap(train, cfg["positives_per_user"])
        ds = train._dataset
        n_split = [int(x._dataset.inter_num) for x in (train, valid, test)]
        # RecBole's counts: users and items include its padding id 0; Gowalla's test file is valid's
        n_inter = sum(n_split[:2]) if "benchmark_filename" in kw else sum(n_split)
        rec.update(load_s=round(time.perf_counter() - t, 2), n_users=int(ds.user_num), n_items=int(ds.item_num),
                   n_inter=n_inter, n_train=n_split[0],
                   batches_per_epoch=len(train), load_peak_rss_mib=round(_proc_status_mib("VmHWM")),
                   rss_after_load_mib=round(_proc_status_mib("VmRSS")))
        times, startups = [], []
        k = args.max_batches if 0 < args.max_batches < len(train) else 0
        for ep in range(args.epochs):
            loader = Limited(train, k) if k else train
            t0 = time.perf_counter()
            trainer._train_epoch(loader, ep)
            t_end = time.perf_counter()
            if k:
                # The epoch projected from its first k batches: the start-up once, the k batches'
                # time scaled to the epoch's batches. (Scaling the whole time, start-up included,
                # multiplied the start-up by len(train) / k: 240x at 10M rows with k = 20.)
                startups.append(loader.first_at - t0)
                times.append(startups[-1] + (t_end - loader.first_at) * len(train) / k)
            else:
                times.append(t_end - t0)
            print(f"{run.name}: epoch {ep} {times[-1]:.2f} s", file=sys.stderr, flush=True)
        if k:
            rec["projected_from_batches"] = k
            rec["startup_s"] = [round(x, 3) for x in startups]
        rec["s_per_epoch"] = [round(x, 3) for x in times]
        rec["s_epoch"] = round(statistics.median(times[1:]) if len(times) >= 3 else times[-1], 3)
        if args.eval:
            t = time.perf_counter()
            res = trainer.evaluate(valid, load_best_model=False)
            rec["eval_s"] = round(time.perf_counter() - t, 2)
            rec["valid"] = {k: round(float(v), 4) for k, v in res.items()}
        if torch.cuda.is_available() and cfg["device"].type == "cuda":
            rec["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    except Exception as e:  # recorded, and the benchmark goes on with the next run
        import traceback

        traceback.print_exc()
        rec["error"] = f"{type(e).__name__}: {e}"[:500]
    rec["peak_rss_mib"] = round(_proc_status_mib("VmHWM"))
    return rec


# --- the parent ----------------------------------------------------------------------------------

def _git(*a) -> str:
    return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def commit() -> str:
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return _git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def _key(rec: dict) -> tuple:
    return (rec["name"], rec.get("commit"), rec.get("epochs"), rec.get("eval"), rec.get("threads"), rec.get("gpu_id"),
            rec.get("max_batches", 0))


def load(path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: ignored (the run is redone)
            pass
    return out


def launch(run: Run, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", run.name, "--epochs", str(args.epochs),
           "--max-batches", str(args.max_batches),
           "--threads", str(args.threads), "--gpu-id", args.gpu_id, "--synth-dir", args.synth_dir]
    cmd += ["--eval"] if args.eval else []
    # Its own session, so a timeout ends every process of the run; RecBole writes log/ into the
    # working directory: a temporary one.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         cwd=tempfile.gettempdir())
    t = time.perf_counter()
    try:
        out, err = p.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"name": run.name, "error": f"timed out after {args.timeout:g} s", "timed_out": True,
                "timeout": args.timeout}
    wall = round(time.perf_counter() - t, 1)
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            rec = json.loads(line)
            if "error" in rec:
                print(err[-3000:], file=sys.stderr)
            return {**rec, "wall_s": wall}
    return {"name": run.name, "error": f"exit {p.returncode} without a result: {err[-800:]}", "wall_s": wall}


def selected(args) -> list[Run]:
    runs = [r for r in RUNS if (args.group == "all" and r.group != "smoke") or r.group == args.group]
    if args.only:
        names = args.only.split(",")
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            sys.exit(f"unknown run(s) {unknown}; --list shows the names")
        runs = [BY_NAME[n] for n in names]
    return runs


def table(runs: list[Run], recs: list[dict], args) -> str:
    from common import header

    want = (commit(), args.epochs, args.eval, args.threads, args.gpu_id, args.max_batches)
    latest = {}
    for r in recs:  # the last record of each run for this commit and settings
        if _key(r)[1:] == want:
            latest[r["name"]] = r
    lines = [f"runs of commit {want[0]}, {args.epochs} epoch(s) each"
             + (", one full-sort evaluation of valid" if args.eval else "")
             + (f", {args.threads} torch thread(s)" if args.threads else "")
             + (f", s/epoch projected from the first {args.max_batches} batches" if args.max_batches else "")
             + (f", gpu_id {args.gpu_id}" if args.gpu_id else ", CPU") + "\n"]
    cols = "| run | s/epoch | x base | peak RSS MiB | x base RSS | load s | batches/epoch |"
    cols += " eval s |" if args.eval else ""
    sep = "|---" * (cols.count("|") - 1) + "|"
    for data in dict.fromkeys(r.data.name for r in runs):
        some = [r for r in runs if r.data.name == data]
        info = next((latest[r.name] for r in some if "n_users" in latest.get(r.name, {})), {})
        lines.append(f"\n**{data}**: " + (f"{info['n_users'] - 1:,} users, {info['n_items'] - 1:,} items, "
                                                f"{info['n_train']:,} training interactions" if info else "no data"))
        lines += ["", cols, sep]
        for r in some:
            rec, base = latest.get(r.name), latest.get(r.base, {})
            if rec is None:
                lines.append(f"| {r.name} | not run |")
                continue
            if "s_epoch" not in rec:
                lines.append(f"| {r.name} | {rec.get('error', 'failed')[:120]} |")
                continue
            ratio = lambda k: f"{rec[k] / base[k]:.2f}x" if base.get(k) else "-"  # noqa: E731
            row = (f"| {r.name} | {rec['s_epoch']:.2f} | {ratio('s_epoch')} | {rec['peak_rss_mib']:,} | "
                   f"{ratio('peak_rss_mib')} | {rec['load_s']:.1f} | {rec['batches_per_epoch']:,} |")
            row += f" {rec['eval_s']:.1f} |" if args.eval and "eval_s" in rec else (" - |" if args.eval else "")
            lines.append(row)
    lines.append("\n" + header("python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=[*GROUPS, "all"], default="all", help="all: gowalla and scale")
    ap.add_argument("--only", default=None, help="comma-separated run names (overrides --group)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-batches", type=int, default=0,
                    help="time only the first K batches of each epoch and project the epoch (0: whole epochs)")
    ap.add_argument("--eval", action="store_true", help="also time one full-sort evaluation of valid")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--rerun", action="store_true", help="run even what the results file has for this commit")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--gpu-id", default="", help="RecBole's gpu_id ('' = CPU)")
    ap.add_argument("--synth-dir", default=SYNTH_DIR, help="where synthetic datasets are written and reused")
    ap.add_argument("--report", action="store_true", help="print the table from the results file, run nothing")
    ap.add_argument("--list", action="store_true", help="print the run names")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        sys.argv[1:] = []  # RecBole's Config reads --key=value from the command line: nothing of ours
        print(json.dumps(one(BY_NAME[args.one], args)), flush=True)
        return 0
    runs = selected(args)
    if args.list:
        for r in runs:
            print(f"{r.name:32s} {r.model:9s} {json.dumps(r.plugin) if r.plugin else 'RecBole loss and sampler'}")
        return 0
    results = Path(args.results)
    if not args.report:
        rev = commit()
        # a run that timed out is done only if it had at least this --timeout
        done = {_key(r) for r in load(results) if r.get("timeout", math.inf) >= args.timeout}
        for run in runs:
            if (run.name, rev, args.epochs, args.eval, args.threads, args.gpu_id, args.max_batches) in done and not args.rerun:
                print(f"{run.name}: in {results} for {rev}, skipped", flush=True)
                continue
            run.data.ensure(args.synth_dir, verbose=True)  # here, so its memory is not the run's
            rec = launch(run, args)
            rec.update(commit=rev, epochs=args.epochs, eval=args.eval, threads=args.threads, gpu_id=args.gpu_id,
                       max_batches=args.max_batches, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            results.parent.mkdir(parents=True, exist_ok=True)
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    print(table(runs, load(results), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
