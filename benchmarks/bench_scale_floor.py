"""The floor of a per-row MF + SL step at Gowalla size, part by part, next to the whole epochs.

Each part is timed alone over one epoch's batches (the real batch sizes, the real users and
training positives), in the same process and the same run as RecBole's BPR epoch and the plugin's
SL epoch, so the distance between the plugin's epoch and the sum of its unavoidable parts is
visible. The parts are what any exact per-row SL step with N uniform negatives (training
positives excluded) and cosine scores must do with torch's CPU kernels:

- iterate RecBole's training loader (users and positives only: the plugin draws its own negatives);
- draw B x N uniform ids (numpy's PCG64) and test each once for membership in the training positives;
- normalise the user rows and the item table, forward and backward;
- the B x N scores (a sampled dense-dense product) and their two gradients (a weighted bag sum
  over each row's negatives, and one over each item's occurrences after sorting the ids);
- SL's logsumexp over the B x N logits, forward and backward;
- Adam's update of both tables (RecBole's optimizer; BPR's step pays it too).

No autograd bookkeeping, Python overhead or allocation of the loss's small tensors is counted.

With ``--sampler shared`` or ``--sampler in_batch`` the parts are those of a step whose negatives
are one set of N items shared by every row (N = ``--neg-num`` drawn uniformly, or the batch's own
positives), with ``sparse_update`` as the plugin's epoch next to them runs it:

- iterate the loader; draw the N shared ids (``shared`` only);
- the [B, N] mask of each row's positive and its user's training positives among the N (the
  plugin's sampler, which sets the few masked entries from their positions);
- look up and normalise the B user rows and the B + N item rows, forward and backward;
- the three [B, d] x [d, N] products: scores forward, the gradients of the user and item rows;
- SL's masked logsumexp over [B, N], forward and backward;
- the lazy Adam update of the rows the batch touched (recbole_dsl.optim.LazyAdam).

    python benchmarks/bench_scale_floor.py [--sampler uniform|shared|in_batch] [--neg-num 256] [--reps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_scale import GOWALLA, MF  # noqa: E402
from common import header, plugin_run, recbole_run, timed_epoch  # noqa: E402


def parts(neg_num: int, reps: int):
    from recbole_dsl.losses.lse import scaled_logsumexp
    from recbole_dsl.scoring import normalize, sampled_scores

    data_kw = dict(GOWALLA, **MF)
    _, _, bpr, data = recbole_run("BPR", "gowalla", **data_kw)
    _, net, sl_tr, _ = plugin_run("BPR", "gowalla", data=data, **data_kw, rec_loss="SL", neg_num=neg_num)
    train = data[0]
    uid, iid = net.USER_ID, net.ITEM_ID
    batches = [(inter[uid], inter[iid]) for inter in train]
    n_items, d = net.n_items, net.item_embedding.weight.shape[1]
    sampler = net.neg_sampler
    rng = np.random.default_rng(0)
    ids = [torch.from_numpy(rng.integers(1, n_items, size=(u.shape[0], neg_num))) for u, _ in batches]
    ut, it = torch.randn(net.n_users, d, requires_grad=True), torch.randn(n_items, d, requires_grad=True)
    opt = torch.optim.Adam([ut, it], lr=1e-3)
    ut.grad, it.grad = torch.randn_like(ut), torch.randn_like(it)
    un = [F.normalize(torch.randn(u.shape[0], d), dim=-1) for u, _ in batches]
    itn = F.normalize(it.detach(), dim=-1)
    grads = [torch.randn(u.shape[0], neg_num) for u, _ in batches]

    def loader():
        for _ in train:
            pass

    def draws():
        for u, _ in batches:
            sampler.draw((u.shape[0], neg_num), "cpu")

    def membership():
        for (u, _), i in zip(batches, ids):
            sampler.positives.contains_rows(u, i)

    def normalise():
        for u, _ in batches:
            x = ut[u]
            torch.autograd.grad((normalize(x).sum(), normalize(it).sum()), (x, it))

    def scores_fwd():
        with torch.no_grad():
            for u, i in zip(un, ids):
                sampled_scores(u, itn, i)

    def grad_rows():  # grad_u[b] = sum_j g[b, j] * items[idx[b, j]]
        for g, i in zip(grads, ids):
            F.embedding_bag(i, itn, per_sample_weights=g, mode="sum")

    def grad_items():  # grad_items[v] = sum over occurrences of v of g[b, j] * u[b]
        for u, g, i in zip(un, grads, ids):
            flat = i.view(-1)
            order = torch.argsort(flat.int())
            starts = torch.zeros(n_items, dtype=torch.long)
            torch.cumsum(torch.bincount(flat, minlength=n_items)[:-1], 0, out=starts[1:])
            F.embedding_bag(order // i.shape[1], u, starts, per_sample_weights=g.view(-1)[order], mode="sum")

    def loss():
        for g in grads:
            x = g.clone().requires_grad_()
            torch.autograd.grad(scaled_logsumexp(x, 10.0).sum(), x)

    def adam():
        for _ in batches:
            opt.step()

    table = {"RecBole BPR epoch": lambda: timed_epoch(bpr, train),
             f"plugin MF+SL N={neg_num} epoch": lambda: timed_epoch(sl_tr, train),
             "loader": loader, "draws": draws, "membership test": membership,
             "normalise rows and table (fwd+bwd)": normalise, "scores forward (sampled product)": scores_fwd,
             "grad of user rows (bag sum)": grad_rows, "grad of item table (sort + bag sum)": grad_items,
             "SL logsumexp (fwd+bwd)": loss, "Adam on both tables": adam}
    return _time(table, reps), len(batches)


def shared_parts(sampler_name: str, neg_num: int, reps: int):
    from recbole_dsl.losses.lse import scaled_logsumexp
    from recbole_dsl.optim import LazyAdam
    from recbole_dsl.scoring import normalize

    data_kw = dict(GOWALLA, **MF)
    _, _, bpr, data = recbole_run("BPR", "gowalla", **data_kw)
    _, net, sl_tr, _ = plugin_run("BPR", "gowalla", data=data, **data_kw, rec_loss="SL", neg_num=neg_num,
                                  neg_sampler=sampler_name, sparse_update=True)
    train = data[0]
    uid, iid = net.USER_ID, net.ITEM_ID
    batches = [(inter[uid], inter[iid]) for inter in train]
    n_items, d = net.n_items, net.item_embedding.weight.shape[1]
    sampler = net.neg_sampler
    negs = [sampler.sample(u, i) for u, i in batches]
    shared = [nb.items[0] for nb in negs]  # the [N] set behind each batch's expanded [B, N] view
    # in_batch's N items are the batch's positives: a floor looks up and normalises them once
    own = sampler_name == "in_batch"
    rows = [i if own else torch.cat([i, s]) for (_, i), s in zip(batches, shared)]
    ut = torch.randn(net.n_users, d, requires_grad=True)
    it = torch.randn(n_items, d, requires_grad=True)
    opt = LazyAdam([ut, it], lr=1e-3)
    un = [F.normalize(torch.randn(u.shape[0], d), dim=-1) for u, _ in batches]
    rn = [F.normalize(torch.randn(r.shape[0], d), dim=-1) for r in rows]
    grads = [torch.randn(u.shape[0], s.shape[0]) for (u, _), s in zip(batches, shared)]

    def loader():
        for _ in train:
            pass

    def draws():
        for _ in batches:
            sampler.draw((neg_num,), "cpu")

    def masks():
        for u, i in batches:
            sampler.sample(u, i)

    def normalise():
        for (u, _), r in zip(batches, rows):
            x, y = F.embedding(u, ut, sparse=True), F.embedding(r, it, sparse=True)
            torch.autograd.grad((normalize(x).sum(), normalize(y).sum()), (x, y))

    def products():
        for u, r, g, (b, _) in zip(un, rn, grads, batches):
            nb = r if own else r[b.shape[0]:]
            u @ nb.t()
            g @ nb
            g.t() @ u

    def loss():
        for g, nb in zip(grads, negs):
            x = g.clone().requires_grad_()
            torch.autograd.grad(scaled_logsumexp(x, 10.0, None, nb.mask).sum(), x)

    grad_u = [torch.sparse_coo_tensor(u.unsqueeze(0), torch.randn(u.shape[0], d), ut.shape) for u, _ in batches]
    grad_i = [torch.sparse_coo_tensor(r.unsqueeze(0), torch.randn(r.shape[0], d), it.shape) for r in rows]

    def adam():
        for gu, gi in zip(grad_u, grad_i):
            ut.grad, it.grad = gu, gi
            opt.step()

    table = {"RecBole BPR epoch": lambda: timed_epoch(bpr, train),
             f"plugin MF+SL {sampler_name} N={shared[0].shape[0]} sparse_update epoch": lambda: timed_epoch(sl_tr, train),
             "loader": loader}
    if sampler_name == "shared":
        table["draw the shared ids"] = draws
    table.update({"masks (own positive, training positives)": masks,
                  "look up and normalise rows (fwd+bwd)": normalise,
                  "three [B, d] x [d, N] products": products,
                  "SL masked logsumexp (fwd+bwd)": loss, "lazy Adam on the touched rows": adam})
    return _time(table, reps), len(batches)


def _time(table, reps):
    times = {k: [] for k in table}
    for rep in range(reps + 1):  # the first round warms up
        for k, f in table.items():
            t = time.perf_counter()
            f()
            if rep:
                times[k].append(time.perf_counter() - t)
        print({k: round(v[-1], 3) for k, v in times.items() if v}, flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sampler", choices=["uniform", "shared", "in_batch"], default="uniform")
    ap.add_argument("--neg-num", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.sampler == "uniform":
        res, n_batches = parts(a.neg_num, a.reps)
    else:
        res, n_batches = shared_parts(a.sampler, a.neg_num, a.reps)
    names = list(res)
    bpr, sl = res[names[0]], res[names[1]]
    floor = sum(res[k] for k in names[2:])
    print(header(" ".join(["python benchmarks/bench_scale_floor.py", *sys.argv[1:]])))
    print(f"Gowalla, MF, batch 2048, d 64, {n_batches} batches per epoch; s per epoch, median of {a.reps}\n")
    print("| part | s / epoch | vs RecBole BPR epoch |\n|---|---|---|")
    for k in names:
        print(f"| {k} | {res[k]:.2f} | {res[k] / bpr:.2f}x |")
    print(f"| **sum of the parts (floor)** | {floor:.2f} | {floor / bpr:.2f}x |")
    print(f"\nplugin epoch / floor: {sl / floor:.2f}x")


if __name__ == "__main__":
    main()
