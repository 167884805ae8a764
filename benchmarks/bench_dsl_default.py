"""Which DSL default ships: both branches or the reweighting alone, on ml-100k's validation split.

    python benchmarks/bench_dsl_default.py [--seeds 3] [--threads 1] [--out benchmarks/results/dsl_default.jsonl]

bench_dsl.py's protocol (MF, 256 uniform negatives, cosine, lr 1e-3, batch 2048, early stop after 5
validations without gain, at most 100 epochs) at DSL's chosen point (tau 0.3, kappa 2, alpha 0.5,
gamma 0.5) with and without the temperature branch, and SL at its chosen tau 0.15, each over the
same seeds. Only validation NDCG@20 decides; test is recorded, not used. Resumable: a (variant,
seed) already in the results file is not rerun; each run is appended as it finishes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dsl import run  # noqa: E402
from common import commit, machine, plugin_run  # noqa: E402
import torch  # noqa: E402

POINT = {"rec_loss": "DSL", "loss_tau": 0.3, "dsl_kappa": 2.0, "dsl_alpha": 0.5, "dsl_gamma": 0.5}
VARIANTS = {
    "SL tau 0.15": {"rec_loss": "SL", "loss_tau": 0.15},
    "DSL both branches": {**POINT, "dsl_temperature": True},
    "DSL reweighting only": {**POINT, "dsl_temperature": False},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/dsl_default.jsonl")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if not args.report:
        torch.set_num_threads(args.threads)
        _, _, _, data = plugin_run("BPR", rec_loss="SL")
        for seed in range(2020, 2020 + args.seeds):
            for name, point in VARIANTS.items():
                if any(r["variant"] == name and r["seed"] == seed for r in done):
                    continue
                r = {"variant": name, "seed": seed, **run("BPR", data, seed, **point),
                     "commit": commit(), "machine": machine()}
                done.append(r)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(name, seed, r["valid"], r["test"], flush=True)
    print("| variant | seeds | valid NDCG@20 (each seed) | mean | test NDCG@20 mean | epochs |")
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        rs = sorted((r for r in done if r["variant"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        v = [r["valid"]["ndcg@20"] for r in rs]
        t = [r["test"]["ndcg@20"] for r in rs]
        print(f"| {name} | {len(rs)} | {' / '.join(f'{x:.4f}' for x in v)} | {statistics.mean(v):.4f} | "
              f"{statistics.mean(t):.4f} | {' / '.join(str(r['epochs']) for r in rs)} |")


if __name__ == "__main__":
    main()
