"""The catalogue scan of DSL's `dsl_slate_source: catalogue`: each row's k highest scores over the
whole catalogue, its training positives excluded (recbole_dsl.losses.full.row_topk_all), at the
Gowalla size (B = 2048 rows, 40,981 items, d = 64), for a few slate sizes and block sizes, against
the earlier form of the scan (a sorted top-k merged after every block), interleaved in rounds.

    python benchmarks/bench_catalogue_scan.py [--threads 2] [--rounds 3] [--ks 20,100,1000]

Prints the median ms per scan of each (k, block, form) and the [B, d] x [d, n_items] product alone,
the part no form of the scan avoids. Both forms return the same values (checked here).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sorted_merges(u, items, k, excluded, block):
    """The scan as it was: a sorted top-k of the running survivors and every block."""
    import torch

    from recbole_dsl.losses.full import _block_scores, item_blocks

    top = u.new_empty((u.shape[0], 0))
    for blk in item_blocks(items.shape[0], excluded, block, 1, u.device):
        cand = torch.cat([top, blk.fill_(_block_scores(u, items, blk), float("-inf"))], dim=1)
        top = torch.topk(cand, min(int(k), cand.shape[1]), dim=1).values
    return top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ks", default="20,100,1000")
    ap.add_argument("--blocks", default="4096,8192,65536")
    ap.add_argument("--items", type=int, default=40_981)
    ap.add_argument("--rows", type=int, default=2048)
    args = ap.parse_args()
    import torch

    from recbole_dsl.compat import tune_cpu_malloc
    from recbole_dsl.losses.full import Excluded, row_topk_all

    torch.set_num_threads(args.threads)
    tune_cpu_malloc()
    g = torch.Generator().manual_seed(0)
    b, n, d = args.rows, args.items, 64
    u = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    items = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    # about 24 training positives per row (Gowalla's mean)
    rows = torch.arange(b).repeat_interleave(24)
    excluded = Excluded.of(rows, torch.randint(1, n, (rows.numel(),), generator=g))

    def timed(fn):
        out = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    cases = {("matmul alone", "-", "-"): lambda: u @ items.T}
    for k in map(int, args.ks.split(",")):
        for blk in map(int, args.blocks.split(",")):
            a = row_topk_all(u, items, k, excluded=excluded, block=blk)
            ref = sorted_merges(u, items, k, excluded, blk)
            assert torch.equal(a, ref), (k, blk)
            cases[(k, blk, "unsorted merges (now)")] = lambda k=k, blk=blk: row_topk_all(u, items, k, excluded=excluded,
                                                                                          block=blk)
            cases[(k, blk, "sorted merges (before)")] = lambda k=k, blk=blk: sorted_merges(u, items, k, excluded, blk)
    times = {key: [] for key in cases}
    for _ in range(args.rounds):
        for key, fn in cases.items():
            times[key].append(timed(fn))
    print(f"B {b}, items {n}, d {d}, threads {args.threads}, best of {args.reps} per round, "
          f"median of {args.rounds} rounds, ms")
    print("| k | block | form | ms |\n|---|---|---|---|")
    for key, ts in times.items():
        print(f"| {key[0]} | {key[1]} | {key[2]} | {1000 * statistics.median(ts):.0f} |")


if __name__ == "__main__":
    main()
