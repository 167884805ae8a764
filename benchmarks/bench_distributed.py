"""1 process against 2 (RecBole's DDP path, gloo on the CPU) on one machine, side by side.

A correctness run, not a scaling claim: on a 2-core machine two ranks share the cores one process
would use, and every step all-reduces the gradient of both embedding tables. It shows that a
distributed run trains to the same quality as one process with the same global batch, what the
per-step synchronisation costs here, and what neg_cross_rank costs for in_batch.

Each configuration is run through the command line (`run_recbole_dsl.py`, `--nproc=2` for the
distributed ones), epoch times read from RecBole's log; results are appended to
benchmarks/results/distributed.jsonl as they come.

    python benchmarks/bench_distributed.py [--epochs 5] [--dataset ml-100k]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "distributed.jsonl"
EPOCH = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
TEST = re.compile(r"^test: (.*)$", re.M)

RUNS = [  # (name, processes, threads per process, extra keys)
    ("SL uniform N=256, 1 process", 1, 2, {"neg_sampler": "uniform"}),
    ("SL uniform N=256, 2 processes", 2, 1, {"neg_sampler": "uniform"}),
    ("SL in_batch, 1 process", 1, 2, {"neg_sampler": "in_batch"}),
    ("SL in_batch, 2 processes", 2, 1, {"neg_sampler": "in_batch"}),
    ("SL in_batch, 2 processes, neg_cross_rank", 2, 1, {"neg_sampler": "in_batch", "neg_cross_rank": True}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name, nproc, threads, extra, args, out):
    keys = {"rec_loss": "SL", "neg_num": 256, "epochs": args.epochs, "train_batch_size": 2048,
            "eval_step": args.epochs, "state": "INFO", "show_progress": False, "gpu_id": "",
            "checkpoint_dir": str(out / "saved"), "dataset": args.dataset, **extra}
    cmd = [sys.executable, str(ROOT / "run_recbole_dsl.py")] + [f"--{k}={v}" for k, v in keys.items()]
    if nproc > 1:
        cmd += [f"--nproc={nproc}", f"--port={free_port()}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, cwd=out)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    epochs = [float(s) for _, s in EPOCH.findall(r.stderr + r.stdout)]
    test = dict(kv.split(": ") for kv in TEST.search(r.stdout).group(1).split(", "))
    return {"run": name, "processes": nproc, "threads_per_process": threads, "wall_s": round(wall, 1),
            "epoch_s": [round(e, 2) for e in epochs], "median_epoch_s": round(statistics.median(epochs[1:] or epochs), 2),
            "test": {k: float(v) for k, v in test.items()}}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--out", default="/tmp/recbole_dsl_bench_ddp")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = header("python benchmarks/bench_distributed.py " + " ".join(argv or sys.argv[1:]))
    print(meta, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name, nproc, threads, extra in RUNS:
        res = run(name, nproc, threads, extra, args, out)
        res["meta"] = meta
        print(json.dumps(res), flush=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
