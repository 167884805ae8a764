"""BSL's shipped default against SL on Gowalla validation, at a fixed epoch budget.

MF (RecBole's BPR model), 256 uniform negatives, batch 2048, lr 5e-3, 64-dim, at most `--epochs`
epochs with validation NDCG@20 every 5 (early stopping after 3 evaluations without gain), on
../shared/data/gowalla (train / valid; the valid file also stands in for RecBole's test split,
whose numbers are not reported). Each run is one command-line process with 1 torch thread, two
at a time; finished runs (by name) are skipped, results appended to
benchmarks/results/bsl_gowalla.jsonl as they come.

    python benchmarks/bench_bsl_gowalla.py [--epochs 20] [--parallel 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bsl_gowalla.jsonl"
BEST = re.compile(r"^valid: (.*)$", re.M)
RUNS = {  # in pairs, most telling first: SL at BSL's temperature against the shipped default
    "SL tau 0.2": {"rec_loss": "SL", "loss_tau": 0.2},
    "BSL official per-row t1 0.2 t2 1.1 (shipped default)": {"rec_loss": "BSL"},
    "SL tau 0.1": {"rec_loss": "SL", "loss_tau": 0.1},
    "BSL official per-row t1 0.1 t2 1.2": {"rec_loss": "BSL", "bsl_t1": 0.1, "bsl_t2": 1.2},
}


def run(name, extra, args, out, meta):
    keys = {"model": "BPR", "dataset": "gowalla", "data_path": str(ROOT.parent / "shared" / "data"),
            "benchmark_filename": "['train','valid','valid']", "load_col": "{'inter':['user_id','item_id']}",
            "neg_num": 256, "train_batch_size": 2048, "learning_rate": 5e-3, "embedding_size": 64,
            "epochs": args.epochs, "eval_step": 5, "stopping_step": 3, "state": "INFO", "show_progress": False,
            "checkpoint_dir": str(out / "saved"), "gpu_id": "", **extra}
    cmd = [sys.executable, str(ROOT / "run_recbole_dsl.py")] + [f"--{k}={v}" for k, v in keys.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, cwd=out)
    if r.returncode != 0:
        return {"run": name, "error": r.stderr[-2000:]}
    valid = dict(kv.split(": ") for kv in BEST.search(r.stdout).group(1).split(", "))
    evals = [float(v) for v in re.findall(r"valid_score: ([0-9.]+)", r.stderr)]
    res = {"run": name, "keys": extra, "best_valid": {k: float(v) for k, v in valid.items()},
           "valid_ndcg_per_eval": evals, "wall_s": round(time.perf_counter() - t, 1), "epochs_budget": args.epochs,
           "meta": meta}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(json.dumps(res), flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="/tmp/recbole_dsl_bench_bsl_gowalla")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = header("python benchmarks/bench_bsl_gowalla.py " + " ".join(argv or sys.argv[1:]))
    done = set()
    if RESULTS.exists():
        done = {json.loads(line)["run"] for line in RESULTS.read_text().splitlines() if line.strip()
                if "error" not in json.loads(line)}
    todo = [(n, k) for n, k in RUNS.items() if n not in done]
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda nk: run(nk[0], nk[1], args, out, meta), todo))


if __name__ == "__main__":
    main()
