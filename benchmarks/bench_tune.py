"""Benchmark of the Ray Tune search (BENCHMARKS.md, section Tuning).

SL's 6-point temperature grid (properties/tune/SL.yaml) for MF on ml-100k, three ways:
  parallel    trials side by side, 1 CPU (1 torch thread) each, as many as the machine has CPUs
  sequential  one trial after another, each with all the CPUs (torch threads = CPUs)
  sequential1 one trial after another, 1 CPU each (not run by default)
  asha        as parallel, with ASHA stopping the lagging temperatures early
Every trial trains the same fixed number of epochs (RecBole's early stopping is pushed out of
reach) so the modes do the same work; one Ray instance serves all modes, so its start-up is not
counted. Reported: wall time, epochs spent, best validation NDCG@20 and its temperature.
No test metric is computed.

    python benchmarks/bench_tune.py                       # about 10-15 minutes on 2 cores
    python benchmarks/bench_tune.py --epochs=4 --modes=parallel,sequential   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--neg_num", type=int, default=256)
    p.add_argument("--embedding_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=0.001)
    p.add_argument("--grace_period", type=int, default=2, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction_factor", type=float, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    p.add_argument("--modes", default="parallel,sequential,asha")
    p.add_argument("--out", default=str(ROOT / "bench_out" / "tune"))
    args = p.parse_args(argv)

    from recbole_dsl.tune import run_tune
    from recbole_dsl.tune.runner import _init_ray, _shutdown_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = ROOT / "properties" / "tune" / "SL.yaml"
    config = {
        "epochs": args.epochs,
        "stopping_step": args.epochs + 1,  # same work in every trial: no early stopping
        "neg_num": args.neg_num,
        "embedding_size": args.embedding_size,
        "learning_rate": args.learning_rate,
        "gpu_id": "",
        "state": "WARNING",
    }
    modes = {
        "parallel": dict(cpus_per_trial=1, max_concurrent_trials=None),
        "sequential": dict(cpus_per_trial=args.cpus, max_concurrent_trials=1),
        "sequential1": dict(cpus_per_trial=1, max_concurrent_trials=1),
        "asha": dict(cpus_per_trial=1, max_concurrent_trials=None, scheduler="asha",
                     grace_period=args.grace_period, reduction_factor=args.reduction_factor),
    }
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    session = _init_ray(None, args.cpus, None, None, verbose=0)
    results = {}
    try:
        for mode in chosen:
            load0 = loadavg()
            t0 = time.time()
            res = run_tune(space, model="BPR", dataset="ml-100k", config_dict=config, search_alg="grid",
                           storage_path=out, name=f"{mode}-{stamp}", verbose=0, test_best=False,
                           **modes[mode])
            wall = time.time() - t0
            best = res.best or {}
            results[mode] = {
                "wall_s": round(wall, 1),
                "trials": len(res.rows),
                "epochs": res.epochs_total,
                "stopped_early": sum(r["status"] == "stopped early" for r in res.rows),
                "errors": res.num_errors,
                "best_valid_ndcg@20": best.get("best_valid_score"),
                "best_loss_tau": (best.get("params") or {}).get("loss_tau"),
                "per_tau": {r["loss_tau"]: r.get("best valid ndcg@20") for r in res.rows},
                "loadavg_before": load0,
                "loadavg_after": loadavg(),
                "path": res.path,
            }
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    finally:
        if session is not None:
            _shutdown_ray(session)  # and the processes the local session leaves behind
    meta = {"epochs_per_trial": args.epochs, "neg_num": args.neg_num, "embedding_size": args.embedding_size,
            "cpus": args.cpus, "grid": [0.01, 0.025, 0.05, 0.1, 0.2, 0.5], "model": "BPR (MF)", "loss": "SL",
            "dataset": "ml-100k"}
    with open(out / f"bench_tune-{stamp}.json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print()
    print("| mode | wall time | trials | epochs spent | stopped early | best valid NDCG@20 (tau) |")
    print("|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['wall_s']:.0f} s | {r['trials']} | {r['epochs']} | {r['stopped_early']} | "
              f"{r['best_valid_ndcg@20']:.4f} ({r['best_loss_tau']}) |")
    for seq in ("sequential", "sequential1"):
        if "parallel" in results and seq in results:
            print(f"\nparallel speed-up over {seq}: {results[seq]['wall_s'] / results['parallel']['wall_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
