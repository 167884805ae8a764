"""Speed benchmark, everything measured side by side in one process on one split of ml-100k.

(a) seconds per training epoch: MF + SL with N = 1000 negatives per positive (the plugin) versus
    RecBole's own BPR model (1 negative, RecBole's sampler), epochs interleaved, median ratio;
    plus the same for DSL (its cost target is <= 1.3x SL);
(b) time to quality: wall-clock seconds (training + validation) until MF + SL first reaches the
    best validation NDCG@20 that RecBole's BPR model reaches with its default settings;
(c) where the time goes (torch profiler, one SL epoch) and peak memory (RSS growth per variant,
    each in a fresh subprocess);
(d) the score-path crossover: per-batch seconds of the "full" and "gather" paths (forward +
    backward of SL) for catalogue sizes and N on synthetic tables;
(e) a lower bound for (a): the epoch's unavoidable parts (loader, the B x N draws, the three
    products) timed alone, next to RecBole's BPR epoch.

    python benchmarks/bench_speed.py [--reps 5] [--skip-ttq]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, plugin_run, recbole_run, timed_epoch  # noqa: E402

import torch  # noqa: E402

N = 1000
SL = {"rec_loss": "SL", "neg_num": N, "loss_tau": 0.1}


def epoch_ratios(reps):
    _, _, bpr, data = recbole_run("BPR")
    variants = {
        "MF+SL N=1000": plugin_run("BPR", data=data, **SL)[2],
        "MF+DSL N=1000 (defaults)": plugin_run("BPR", data=data, **{**SL, "rec_loss": "DSL"})[2],
        "LightGCN+SL N=1000": plugin_run("LightGCN", data=data, **SL)[2],
        "MF+SL N=256": plugin_run("BPR", data=data, **{**SL, "neg_num": 256})[2],
        "MF+DSL N=256 (defaults)": plugin_run("BPR", data=data, **{**SL, "neg_num": 256, "rec_loss": "DSL"})[2],
        "MF+SL N=1000 shared": plugin_run("BPR", data=data, **{**SL, "neg_sampler": "shared"})[2],
    }
    _, _, lgcn_bpr, lgcn_data = recbole_run("LightGCN")
    times = {k: [] for k in ["RecBole BPR", "RecBole LightGCN", *variants]}
    for rep in range(reps + 1):  # the first round warms up and is dropped
        row = {"RecBole BPR": timed_epoch(bpr, data[0], rep), "RecBole LightGCN": timed_epoch(lgcn_bpr, lgcn_data[0], rep)}
        for k, tr in variants.items():
            row[k] = timed_epoch(tr, data[0], rep)
        if rep:
            for k, v in row.items():
                times[k].append(v)
        print({k: round(v, 3) for k, v in row.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, times


def floor(reps):
    """Seconds per epoch of what an exact MF + SL epoch at N = 1000 has to do on this machine,
    each part timed alone with nothing else in the loop, next to RecBole's BPR epoch in the same
    process: iterate RecBole's training loader; draw B x N uniform item ids per batch (numpy's
    PCG64, the fastest generator here); look each draw up once in the dense table of training
    positives (exclusion, nothing redrawn); the three [B, d] x [d, n_items] products (forward and
    the two gradients; the "full" path, the cheapest at N = 1000 of 1683 items) in preallocated
    buffers; pick the negatives' columns and scatter their gradient back; one fused log-softmax
    forward and its exp backward over the B x N logits. Their sum bounds from below any epoch
    built from torch's CPU kernels this way (per-row exact negatives, full product): no allocation,
    no autograd, no optimizer step, no Python overhead is counted."""
    from recbole_dsl.samplers.base import UniformSampler

    _, _, bpr, data = recbole_run("BPR")
    _, net, sl_tr, _ = plugin_run("BPR", data=data, **SL)
    train = data[0]
    n_items, d = net.n_items, net.item_embedding.weight.shape[1]
    batches = [int(inter[bpr.model.USER_ID].shape[0]) for inter in train]
    table = torch.randn(n_items, d)
    full = torch.empty(max(batches), n_items)
    grad_u, grad_i = torch.empty(max(batches), d), torch.empty(n_items, d)
    sampler = UniformSampler(n_items, N)  # no exclusion: draws only
    excl = net.neg_sampler  # the run's sampler: uniform with exclusion of training positives

    def loader():
        for _ in train:
            pass

    def draws():
        for b in batches:
            sampler.draw((b, N), "cpu")

    def draws_excl():
        for inter in train:
            excl.sample(inter[bpr.model.USER_ID], inter[bpr.model.ITEM_ID])

    def gemms():
        for b in batches:
            u, f = torch.randn(b, d), full[:b]
            torch.mm(u, table.t(), out=f)
            torch.mm(f, table, out=grad_u[:b])
            torch.mm(f.t(), u, out=grad_i)

    ids = [torch.randint(1, n_items, (b, N)) for b in batches]
    users = [torch.randint(0, net.n_users, (b,)) for b in batches]

    def membership():  # one lookup per draw in the dense positive table, nothing redrawn
        for u, i in zip(users, ids):
            excl.positives.contains_rows(u, i)

    def pick():  # the negatives' columns of the product and the scatter of their gradient
        for b, i in zip(batches, ids):
            picked = full[:b].gather(1, i)
            full[:b].zero_().scatter_add_(1, i, picked)

    logits = [torch.randn(b, N) for b in batches]

    def softmax():  # fused log-softmax kernel forward, exp of it backward: 2M logits per batch
        for x in logits:
            torch.log_softmax(x, 1).exp_()

    parts = {"RecBole BPR epoch": lambda: timed_epoch(bpr, train), "MF+SL N=1000 epoch": lambda: timed_epoch(sl_tr, train),
             "loader only": loader, "uniform draws only (numpy)": draws,
             "the plugin's sampler (draws + exclusion)": draws_excl, "membership test only": membership,
             "3 products in buffers": gemms, "pick the N columns + scatter back": pick,
             "softmax forward + backward (fused kernel)": softmax}
    times = {k: [] for k in parts}
    for rep in range(reps + 1):
        for k, f in parts.items():
            t = time.perf_counter()
            f()
            if rep:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def time_to_quality():
    """RecBole BPR with its default training settings vs MF + SL at N = 1000, 256 and 64, all
    to convergence (same learning rate, batch size and early stopping)."""
    log = {}
    runs = [("RecBole BPR", lambda: recbole_run("BPR", epochs=300, stopping_step=10))]
    for n in (1000, 256, 64):
        runs.append((f"MF+SL N={n}", lambda n=n: plugin_run("BPR", epochs=300, stopping_step=10, **{**SL, "neg_num": n})))
    # Both at a 5x larger learning rate (not RecBole's default): does the gap depend on it?
    runs.append(("RecBole BPR, lr 5e-3", lambda: recbole_run("BPR", epochs=300, stopping_step=10, learning_rate=0.005)))
    runs.append(("MF+SL N=256, lr 5e-3", lambda: plugin_run("BPR", epochs=300, stopping_step=10, learning_rate=0.005,
                                                            **{**SL, "neg_num": 256})))
    for name, make in runs:
        _, _, trainer, data = make()
        curve, t0 = [], [time.perf_counter()]

        def cb(epoch, score, curve=curve, t0=t0):
            curve.append((time.perf_counter() - t0[0], score))

        t0[0] = time.perf_counter()
        trainer.fit(data[0], data[1], saved=False, callback_fn=cb)
        log[name] = curve
    target = max(s for _, s in log["RecBole BPR"])
    first = {k: next((t for t, s in c if s >= target), None) for k, c in log.items()}
    return target, first, log


def profile_sl_epoch():
    from torch.profiler import ProfilerActivity, profile

    _, _, tr, data = plugin_run("BPR", **SL)
    timed_epoch(tr, data[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_epoch(tr, data[0], 1)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory(variant: str) -> dict:
    """Child process: resident memory (MiB) after data and model are built, and its peak during
    one training epoch (sampled every millisecond; ru_maxrss cannot see it, the data loading
    peaks higher)."""
    import threading

    if variant == "RecBole BPR":
        _, _, tr, data = recbole_run("BPR")
    else:
        _, _, tr, data = plugin_run("BPR", **({**SL, "rec_loss": "DSL"} if "DSL" in variant else SL))
    timed_epoch(tr, data[0])  # allocator warm-up: measure a steady-state epoch
    base = _rss_mib()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    timed_epoch(tr, data[0], 1)
    stop.set()
    t.join()
    return {"before": base, "peak": peak[0], "growth": peak[0] - base}


def crossover(reps=3):
    from recbole_dsl.losses import sl_loss
    from recbole_dsl.scoring import batch_scores

    B, d = 2048, 64
    rows = []
    for n_items in (1_683, 20_000, 100_000):
        for n in (16, 128, 1000):
            table = torch.randn(n_items, d, requires_grad=True)
            u = torch.randn(B, d, requires_grad=True)
            pos = torch.randint(1, n_items, (B,))
            neg = torch.randint(1, n_items, (B, n))
            res = {}
            for path in ("full", "gather"):
                ts = []
                for _ in range(reps):
                    t = time.perf_counter()
                    r = batch_scores(u, table, pos, neg, "cosine", path)
                    p, q = r.pos, r.neg
                    sl_loss(p, q, 0.1).mean().backward()
                    ts.append(time.perf_counter() - t)
                res[path] = statistics.median(ts)
            rows.append((n_items, n, res["full"], res["gather"]))
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-ttq", action="store_true")
    ap.add_argument("--parts", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--out", default="bench_out/speed.md")
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory(args.memory_child)))
        return
    parts = set(args.parts.split(","))
    out = [header("python benchmarks/bench_speed.py " + " ".join(sys.argv[1:]))]
    if "a" in parts:
        med, _ = epoch_ratios(args.reps)
        out.append("\n(a) seconds per training epoch (median of %d interleaved epochs)\n" % args.reps)
        out.append("| variant | s/epoch | vs RecBole BPR | vs MF+SL N=1000 |\n|---|---|---|---|")
        for k, v in med.items():
            out.append(f"| {k} | {v:.3f} | {v / med['RecBole BPR']:.2f}x | {v / med['MF+SL N=1000']:.2f}x |")
    if "b" in parts and not args.skip_ttq:
        target, first, log = time_to_quality()
        out.append(f"\n(b) time to quality: RecBole BPR's best validation NDCG@20 = {target:.4f}\n")
        out.append("| variant | seconds to first reach it | vs RecBole BPR | epoch of it | epochs run | best valid NDCG@20 |\n"
                   "|---|---|---|---|---|---|")
        for k, c in log.items():
            tt = first[k]
            ep = next((i + 1 for i, (_, s) in enumerate(c) if s >= target), None)
            ratio = "-" if tt is None else f"{tt / first['RecBole BPR']:.2f}x"
            out.append(f"| {k} | {'never' if tt is None else f'{tt:.1f}'} | {ratio} | {ep or '-'} | {len(c)} | "
                       f"{max(s for _, s in c):.4f} |")
    if "c" in parts:
        out += memory_and_profile()
    if "d" in parts:
        out.append("\n(d) score-path crossover: seconds per batch (B=2048, d=64, SL forward+backward, cosine)\n")
        out.append("| n_items | N | full | gather | faster |\n|---|---|---|---|---|")
        for n_items, n, f, g in crossover():
            out.append(f"| {n_items} | {n} | {f:.4f} | {g:.4f} | {'full' if f < g else 'gather'} |")
    if "e" in parts:
        med = floor(args.reps)
        bpr = med["RecBole BPR epoch"]
        lower = sum(med[k] for k in ("loader only", "uniform draws only (numpy)", "membership test only",
                                     "3 products in buffers", "pick the N columns + scatter back",
                                     "softmax forward + backward (fused kernel)"))
        out.append("\n(e) lower bound of an MF+SL N=1000 epoch: seconds per epoch of its unavoidable parts "
                   f"(median of {args.reps})\n")
        out.append("| part | s/epoch | vs RecBole BPR epoch |\n|---|---|---|")
        for k, v in med.items():
            out.append(f"| {k} | {v:.3f} | {v / bpr:.2f}x |")
        out.append(f"| **sum of the parts without the epoch rows and the plugin's sampler (lower bound)** | "
                   f"{lower:.3f} | {lower / bpr:.2f}x |")
        out.append(f"| 3x RecBole BPR (the target) | {3 * bpr:.3f} | 3.00x |")
    text = "\n".join(out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def memory_and_profile():
    out = []
    out.append("\n(c) resident memory, fresh process each: after data and model are built, and the peak "
               "during a (second) training epoch\n")
    out.append("| variant | RSS before epoch (MiB) | peak during epoch (MiB) | growth (MiB) |\n|---|---|---|---|")
    for v in ("RecBole BPR", "MF+SL N=1000", "MF+DSL N=1000"):
        r = subprocess.run([sys.executable, __file__, "--memory-child", v], capture_output=True, text=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        out.append(f"| {v} | {m['before']:.0f} | {m['peak']:.0f} | {m['growth']:.0f} |")
    out.append("\nprofile of one MF+SL N=1000 epoch (self CPU time):\n\n```\n" + profile_sl_epoch() + "\n```")
    return out


if __name__ == "__main__":
    main()
