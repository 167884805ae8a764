"""Full-sort evaluation at Gowalla size: RecBole's own MF against the plugin's, side by side.

One process, one model pair (RecBole's BPR model class with its own scoring, and the same class
with rec_loss set, which scores with the plugin's eval_score_fn), each evaluated on Gowalla's
validation file (29,858 users x 40,981 items) at several eval_batch_size values. RecBole packs
max(eval_batch_size // n_items, 1) users into a full-sort batch, so its default 4096 means one
user per batch on any catalogue above 4,096 items. Untrained models: the cost of scoring, sorting
and collecting does not depend on the weights.

    python benchmarks/bench_scale_eval.py [--sizes 4096,409600,16777216] [--reps 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import GOWALLA, MF  # noqa: E402
from common import header, plugin_run, recbole_run  # noqa: E402


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,409600,16777216")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    kw = dict(GOWALLA, **MF)
    _, _, bpr, data = recbole_run("BPR", "gowalla", **kw)
    _, _, sl, _ = plugin_run("BPR", "gowalla", data=data, **kw, rec_loss="SL")
    valid = data[1]
    rows = []
    for size in map(int, a.sizes.split(",")):
        valid.config["eval_batch_size"] = size
        valid._init_batch_size_and_step()
        users = valid.step
        for name, tr in (("RecBole BPR (its scoring)", bpr), ("plugin SL (plugin scoring, cosine)", sl)):
            ts, res = [], None
            for _ in range(a.reps):
                t = time.perf_counter()
                res = tr.evaluate(valid, load_best_model=False)
                ts.append(time.perf_counter() - t)
            rows.append((size, users, name, statistics.median(ts), rss_mib(), res["ndcg@20"]))
            print(rows[-1], flush=True)
    print(header("python benchmarks/bench_scale_eval.py " + " ".join(sys.argv[1:])))
    print("| eval_batch_size | users per batch | model | s per full-sort evaluation | RSS after (MiB) |")
    print("|---|---|---|---|---|")
    for size, users, name, t, rss, _ in rows:
        print(f"| {size:,} | {users} | {name} | {t:.1f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
