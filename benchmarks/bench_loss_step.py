"""One loss's forward and backward on a [B, N] block of scores alone (no model, no optimizer), for
every registered loss setting below, in interleaved rounds; prints the median per setting and its
ratio to SL's. The block is the Gowalla rows' shape (B = 2048 rows, N = 1000 shared negatives with
a few masked), scores uniform in [-1, 1] as cosine scores are.

    python benchmarks/bench_loss_step.py [--threads 1] [--rounds 3] [--repo PATH]

--repo imports recbole_dsl from another checkout (a git worktree of an earlier commit), to compare
two versions: run both, one after the other, on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--repo", default=None)
    args = ap.parse_args()
    if args.repo:
        sys.path.insert(0, args.repo)
    import torch

    import recbole_dsl
    from recbole_dsl.compat import tune_cpu_malloc
    from recbole_dsl.losses import LOSSES, LossContext

    torch.set_num_threads(args.threads)
    tune_cpu_malloc()  # as a training run does: no fresh mapping of large blocks per step
    b, n = 2048, 1000
    g = torch.Generator().manual_seed(0)
    neg0, pos0 = torch.rand(b, n, generator=g) * 2 - 1, torch.rand(b, generator=g) * 2 - 1
    ctx = LossContext(neg_mask=torch.rand(b, n, generator=g) > 0.001,
                      neg_affinity=torch.rand(b, n, generator=g) * 2 - 1)
    group_ctx = LossContext(neg_mask=ctx.neg_mask, user=torch.randint(0, 1000, (b,), generator=g))
    cases = {
        "SL tau 0.1": (LOSSES.get("SL")(tau=0.1), ctx),
        "BSL official t1 0.1 t2 1.2": (LOSSES.get("BSL")(form="official", t1=0.1, t2=1.2), group_ctx),
        "PSL tanh": (LOSSES.get("PSL")(tau=0.05, activation="tanh"), ctx),
        "PSL atan": (LOSSES.get("PSL")(tau=0.05, activation="atan"), ctx),
        "PSL relu": (LOSSES.get("PSL")(tau=0.05, activation="relu"), ctx),
        "DSL reweighting only": (LOSSES.get("DSL")(tau=0.1, temperature=False), ctx),
        "DSL defaults (both branches)": (LOSSES.get("DSL")(tau=0.1), ctx),
    }

    def step(loss, c):
        ts = []
        for _ in range(args.reps):
            neg, pos = neg0.clone().requires_grad_(True), pos0.clone().requires_grad_(True)
            t = time.perf_counter()
            loss(pos, neg, c).backward()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]

    res = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (loss, c) in cases.items():
            res[k].append(step(loss, c))
    sl = min(res["SL tau 0.1"])
    print(f"recbole_dsl from {recbole_dsl.__file__}; {args.threads} thread(s); B={b}, N={n}\n")
    print("| loss | ms per forward + backward (best round's median) | x SL |\n|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {1000 * min(v):.1f} | {min(v) / sl:.2f}x |")


if __name__ == "__main__":
    main()
