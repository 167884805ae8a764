"""The masks of the shared samplers at Gowalla size: one `sample` call per training batch.

    python benchmarks/bench_masks.py [--threads 1] [--passes 3] [--repo PATH]

For `in_batch` (N = the batch's 2048 positives) and `shared` (N = 1000 uniform draws), with
training positives excluded: each row's own positive and its user's training positives among the
N are masked. Median over ``--passes`` passes of ms per batch, every batch of one Gowalla epoch.
``--repo`` imports recbole_dsl (and these benchmarks' helpers) from another checkout, a git
worktree of an earlier commit, to compare side by side in alternating processes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--repo", default=None)
    args = ap.parse_args()
    here = Path(args.repo) / "benchmarks" if args.repo else Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    import torch
    from bench_scale import GOWALLA, MF
    from common import commit, plugin_run
    import recbole_dsl

    torch.set_num_threads(args.threads)
    res = {}
    for sampler in ("in_batch", "shared"):
        _, net, _, (train, _, _) = plugin_run("BPR", "gowalla", **GOWALLA, **MF, epochs=1, rec_loss="SL",
                                              neg_sampler=sampler, neg_num=1000, sparse_update=True)
        batches = [(x[net.USER_ID], x[net.ITEM_ID]) for x in train]
        s = net.neg_sampler
        s.sample(*batches[0])
        times = []
        for _ in range(args.passes):
            t = time.perf_counter()
            for b in batches:
                s.sample(*b)
            times.append((time.perf_counter() - t) / len(batches) * 1e3)
        res[sampler] = statistics.median(times)
    print(f"{Path(recbole_dsl.__file__).parent.parent} (commit {commit()}): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in res.items()) + " per batch")


if __name__ == "__main__":
    main()
