"""DSL's readings each tuned jointly with the temperature by run_tune (Optuna's TPE), against SL's
temperature grid under the same number of trials, on ml-100k and on Gowalla validation.

    python benchmarks/bench_dsl_tune.py                        # every search not yet in the results file
    python benchmarks/bench_dsl_tune.py --only ml-100k         # the ml-100k searches (names containing it)
    python benchmarks/bench_dsl_tune.py --report               # the tables only

Every search is one `run_tune` call (recbole_dsl.tune): the plugin's Config, data preparation and
trainer in every trial, trials compared on validation NDCG@20 after each evaluation, FIFO (no trial
stopped early), 1 torch thread per trial, ``--parallel`` trials at a time, Optuna seeded by the
config's seed (2020). A search's result (every trial's point and best validation NDCG@20, the
chosen point and, on ml-100k only, its test NDCG@20 scored once after the search) is appended to
benchmarks/results/dsl_tune.jsonl when it finishes; finished searches are skipped, and an
interrupted one resumes from its Ray folder under ``--storage`` (finished trials kept).

ml-100k: bench_dsl.py's protocol (RecBole's RS 0.8/0.1/0.1 split, MF, cosine scores, 256 uniform
negatives, Adam lr 1e-3, batch 2048, early stopping on validation NDCG@20 after 5 evaluations
without gain, at most 100 epochs); 8 trials per search. Gowalla: the papers' rows' budget
(examples/papers/gowalla-mf-dsl.yaml: shared N = 1000, sparse_update, lr 1e-3, 15 epochs, validated
every 3); 6 trials per DSL search, twice SL's 3-point grid of bench_papers_gowalla.py, whose
values (same configuration and seed) are the comparison. Gowalla's valid file stands in for
RecBole's test split there, so no test number is computed on Gowalla.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = ROOT / "benchmarks" / "results" / "dsl_tune.jsonl"
GOWALLA_CONFIG = ROOT / "examples" / "papers" / "gowalla-mf-dsl.yaml"

ML100K = {"model": "BPR", "dataset": "ml-100k", "epochs": 100, "stopping_step": 5, "learning_rate": 0.001,
          "train_batch_size": 2048, "embedding_size": 64, "neg_sampler": "uniform", "neg_num": 256,
          "metrics": ["Recall", "NDCG"], "topk": [20], "valid_metric": "NDCG@20", "show_progress": False,
          "state": "WARNING", "gpu_id": ""}
# The Gowalla searches start from the DSL row's shipped configuration; these keys are its own choice
# that the searches below replace or extend (dsl_temperature is set by each search).
GOWALLA = {"data_path": str((ROOT / ".." / "shared" / "data").resolve()), "state": "WARNING", "gpu_id": ""}


def _u(lo, hi):
    return {"uniform": [lo, hi]}


def _log(lo, hi):
    return {"loguniform": [lo, hi]}


# name -> (dataset, space, trials). The DSL spaces: the temperature always, with each reading's own
# knobs (docs/dsl.md); alpha 0.5 unless searched.
_ML_TAU = _log(0.1, 0.5)
SEARCHES = {
    "ml-100k SL grid": ("ml-100k", {"rec_loss": "SL", "loss_tau": {"grid_search": [0.05, 0.075, 0.1, 0.125, 0.15,
                                                                                  0.2, 0.25, 0.3]}}, 8),
    **{f"ml-100k DSL both branches, {m} intensity": (
        "ml-100k", {"rec_loss": "DSL", "loss_tau": _ML_TAU, "dsl_kappa": _u(-3.0, 3.0), "dsl_gamma": _u(-1.0, 1.0),
                    "dsl_intensity": m}, 8) for m in ("sigmoid", "lse", "margin")},
    "ml-100k DSL reweighting only": ("ml-100k", {"rec_loss": "DSL", "loss_tau": _ML_TAU, "dsl_kappa": _u(-3.0, 3.0),
                                                 "dsl_alpha": _u(0.0, 1.0), "dsl_temperature": False}, 8),
    "ml-100k DSL false-negative fold": ("ml-100k", {"rec_loss": "DSL", "loss_tau": _ML_TAU, "dsl_kappa": _u(0.0, 4.0),
                                                    "dsl_gamma": _u(-1.0, 1.0), "dsl_fn_threshold": _u(0.3, 0.95)}, 8),
    "ml-100k DSL catalogue slate": ("ml-100k", {"rec_loss": "DSL", "loss_tau": _ML_TAU, "dsl_gamma": _u(-1.0, 1.0),
                                                "dsl_slate_source": "catalogue",
                                                "dsl_slate_size": {"choice": [20, 100, 256]}}, 8),
    **{f"gowalla DSL both branches, {m} intensity": (
        "gowalla", {"rec_loss": "DSL", "loss_tau": _log(0.05, 0.2), "dsl_kappa": _u(0.0, 4.0),
                    "dsl_gamma": _u(-1.0, 1.0), "dsl_temperature": True, "dsl_intensity": m}, 6)
       for m in ("sigmoid", "lse", "margin")},
    "gowalla DSL reweighting, false-negative fold": (
        "gowalla", {"rec_loss": "DSL", "loss_tau": _log(0.05, 0.2), "dsl_kappa": _u(0.0, 4.0),
                    "dsl_fn_threshold": _u(0.3, 0.9), "dsl_temperature": False}, 6),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def load(path=RESULTS) -> dict:
    out = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[rec["name"]] = rec
    return out


def one(name: str, args) -> dict:
    from recbole_dsl.tune import run_tune
    from common import commit, machine

    dataset, space, trials = SEARCHES[name]
    grid = any(isinstance(v, dict) and "grid_search" in v for v in space.values())
    kw = dict(num_samples=1 if grid else trials, search_alg="grid" if grid else "optuna", scheduler="fifo",
              cpus_per_trial=1, max_concurrent_trials=args.parallel, num_cpus=args.parallel,
              storage_path=args.storage, verbose=0, test_best=dataset == "ml-100k")
    if dataset == "ml-100k":
        kw.update(config_dict=ML100K)
    else:
        kw.update(config_file_list=[str(GOWALLA_CONFIG)], config_dict=GOWALLA)
    folder = Path(args.storage) / _slug(name)
    t0 = time.time()
    if folder.exists():  # an interrupted search: finished trials are kept
        res = run_tune(resume=str(folder), **{k: v for k, v in kw.items() if k not in ("config_dict", "config_file_list")})
    else:
        res = run_tune(dict(space), name=_slug(name), **kw)
    best = res.best or {}
    params = sorted({k for k, v in space.items() if isinstance(v, dict)})
    return {
        "name": name, "dataset": dataset, "space": space, "trials_budget": trials,
        "trials": [{**{k: r.get(k) for k in params}, "valid_ndcg@20": r.get(f"best valid {res.metric}"),
                    "status": r.get("status")} for r in res.rows],
        "best_params": best.get("params"), "best_valid_ndcg@20": best.get("best_valid_score"),
        "best_epoch": best.get("best_epoch"), "test": best.get("test") if dataset == "ml-100k" else None,
        "errors": res.num_errors, "interrupted": res.interrupted, "wall_s": round(time.time() - t0, 1),
        "path": res.path, "commit": commit(), "machine": machine(), "parallel": args.parallel,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _fmt(v):
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def table(recs: dict) -> str:
    lines = []
    for dataset in ("ml-100k", "gowalla"):
        rows = [r for r in recs.values() if r["dataset"] == dataset]
        if not rows:
            continue
        lines += [f"\n{dataset}\n", "| search | trials | best valid NDCG@20 | median of its trials | chosen point |"
                  + (" test NDCG@20 |" if dataset == "ml-100k" else ""),
                  "|---|---|---|---|---|" + ("---|" if dataset == "ml-100k" else "")]
        for r in sorted(rows, key=lambda r: -(r["best_valid_ndcg@20"] or 0)):
            vals = [t["valid_ndcg@20"] for t in r["trials"] if t["valid_ndcg@20"] is not None]
            point = ", ".join(f"{k} {_fmt(round(v, 3) if isinstance(v, float) else v)}"
                              for k, v in sorted((r["best_params"] or {}).items()))
            test = (r["test"] or {}).get("ndcg@20")
            lines.append(f"| {r['name']} | {len(vals)} | {_fmt(r['best_valid_ndcg@20'])} | "
                         f"{_fmt(statistics.median(vals) if vals else None)} | {point} |"
                         + (f" {_fmt(test)} |" if dataset == "ml-100k" else ""))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated substrings of search names")
    ap.add_argument("--parallel", type=int, default=2, help="trials at a time (1 CPU each)")
    ap.add_argument("--storage", default="/tmp/recbole_dsl_bench_dsl_tune")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(SEARCHES))
        return 0
    recs = load(args.results)
    if not args.report:
        wanted = [n for n in SEARCHES if args.only is None or any(s in n for s in args.only.split(","))]
        for name in wanted:
            if name in recs:
                continue
            rec = one(name, args)
            if rec["interrupted"]:
                print(f"{name}: interrupted; rerun to resume", flush=True)
                break
            with open(args.results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            recs[name] = rec
            print(json.dumps({k: rec[k] for k in ("name", "best_valid_ndcg@20", "best_params", "test", "wall_s")}),
                  flush=True)
    print(table(recs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
