"""Time to quality on Gowalla: wall time until MF + SL first reaches RecBole BPR's best validation
NDCG@20, over BPR's time to its best.

Runs, one after another in this process, each from a fresh model on the same prepared split:
RecBole's BPR (its model, loss and sampler) at lr 5e-3 and 1e-3, then the plugin's SL (uniform,
256 negatives, its defaults otherwise) at lr 5e-3 and 1e-3. Every run validates every epoch
(full-sort NDCG@20 on Gowalla's valid file) and stops early after ``--stopping-step`` validations
without gain, or at ``--max-epochs``, or when its training time passes ``--cap`` seconds (then it
is marked capped: its best is a lower bound). A plugin run also stops once it reaches BPR's best
(``--run-to-stop`` runs it on). Time is training time (the validation passes, the same
for every run per epoch, are logged apart).

Each epoch's record is appended to the results file as it comes (JSON lines), so an interrupted
benchmark resumes: a finished run is skipped, an unfinished one restarts.

    python benchmarks/bench_scale_ttq.py [--results benchmarks/results/ttq.jsonl] [--cap 1500]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import GOWALLA, MF, load  # noqa: E402
from common import header, plugin_run, recbole_run  # noqa: E402

# RecBole's BPR runs come first: the plugin's runs need BPR's best as their target.
RUNS = {
    "RecBole BPR, lr 5e-3": ("recbole", {"learning_rate": 5e-3}),
    "RecBole BPR, lr 1e-3": ("recbole", {"learning_rate": 1e-3}),
    "MF+SL N=256, lr 5e-3": ("plugin", {"learning_rate": 5e-3, "rec_loss": "SL", "neg_num": 256}),
    "MF+SL N=256, lr 1e-3": ("plugin", {"learning_rate": 1e-3, "rec_loss": "SL", "neg_num": 256}),
    "MF+SL shared N=1000, lr 5e-3": ("plugin", {"learning_rate": 5e-3, "rec_loss": "SL", "neg_sampler": "shared",
                                                "neg_num": 1000}),
    "MF+SL shared N=1000, sparse_update, lr 5e-3": ("plugin", {"learning_rate": 5e-3, "rec_loss": "SL",
                                                               "neg_sampler": "shared", "neg_num": 1000,
                                                               "sparse_update": True}),
}


def bpr_best(path: Path):
    """RecBole BPR's best validation NDCG@20 over its finished runs, or None before any finished."""
    recs = load(path)
    done = {r["run"] for r in recs if r.get("done") and r["run"].startswith("RecBole BPR")}
    vals = [r["ndcg"] for r in recs if r.get("run") in done and "ndcg" in r]
    return max(vals) if vals else None


def run_one(name, args, path: Path):
    kind, kw = RUNS[name]
    base = {**GOWALLA, **MF, **kw, "epochs": args.max_epochs, "stopping_step": args.stopping_step, "eval_step": 1}
    make = recbole_run if kind == "recbole" else plugin_run
    # Each run prepares its own loaders: RecBole's BPR samples its negatives in its loader, the
    # plugin's loader must not (it draws them on the device).
    _, _, trainer, data = make("BPR", "gowalla", **base)
    train, valid = data[0], data[1]
    with open(path, "a") as f:
        f.write(json.dumps({"run": name, "start": True}) + "\n")
    train_s, best, since_best = 0.0, -1.0, 0
    # A plugin run only has to show when it first reaches BPR's best; running it on to its own
    # early stop would cost the session an hour without changing the ratio.
    target = bpr_best(path) if kind == "plugin" and args.stop_at_target else None
    for epoch in range(args.max_epochs):
        t = time.perf_counter()
        trainer._train_epoch(train, epoch)
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        ndcg = float(trainer.evaluate(valid, load_best_model=False)["ndcg@20"])
        eval_s = time.perf_counter() - t
        best, since_best = (ndcg, 0) if ndcg > best else (best, since_best + 1)
        rec = {"run": name, "epoch": epoch, "train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "ndcg": ndcg,
               "load1": round(os.getloadavg()[0], 2)}
        reached = target is not None and ndcg >= target
        done = since_best >= args.stopping_step or epoch + 1 == args.max_epochs or train_s > args.cap or reached
        if reached:
            rec["reached_target"] = target
        if done:
            rec.update(done=True, capped=train_s > args.cap and since_best < args.stopping_step and not reached)
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(rec, flush=True)
        if done:
            return


def report(recs: list) -> str:
    curves = {}
    for r in recs:
        if r.get("start"):
            curves[r["run"]] = []
        elif r["run"] in curves:
            curves[r["run"]].append(r)
    lines = ["| run | best valid NDCG@20 | at epoch | training s to its best | stopped |", "|---|---|---|---|---|"]
    best = {}
    for name, c in curves.items():
        if not c:
            continue
        top = max(c, key=lambda r: r["ndcg"])
        best[name] = top
        state = ("capped" if c[-1].get("capped") else "reached BPR's best" if c[-1].get("reached_target")
                 else "early stop" if c[-1].get("done") else "unfinished")
        lines.append(f"| {name} | {top['ndcg']:.4f} | {top['epoch']} | {top['train_s']:.0f} | {state} |")
    bprs = [n for n in best if n.startswith("RecBole BPR")]
    if bprs:
        ref = max(bprs, key=lambda n: best[n]["ndcg"])
        target, t_ref = best[ref]["ndcg"], best[ref]["train_s"]
        lines.append(f"\nRecBole BPR's best: {target:.4f} ({ref}), reached after {t_ref:.0f} s of training.\n")
        for name, c in curves.items():
            if name in bprs:
                continue
            hit = next((r for r in c if r["ndcg"] >= target), None)
            lines.append(f"- {name}: " + (f"first at or above it at epoch {hit['epoch']}, after {hit['train_s']:.0f} s: "
                                          f"**{hit['train_s'] / t_ref:.2f}x** BPR's time" if hit else "not reached"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "ttq.jsonl"))
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--cap", type=float, default=1500, help="training seconds per run before it is stopped")
    ap.add_argument("--only", default=None, help="run names separated by semicolons (names contain commas)")
    ap.add_argument("--run-to-stop", dest="stop_at_target", action="store_false",
                    help="run the plugin's runs to their own early stop instead of stopping at BPR's best")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    path = Path(a.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not a.report:
        finished = {r["run"] for r in load(path) if r.get("done")}
        for name in ([n.strip() for n in a.only.split(";")] if a.only else RUNS):
            if name in finished:
                print(f"{name}: finished in {path}, skipped")
                continue
            run_one(name, a, path)
    print(header("python benchmarks/bench_scale_ttq.py " + " ".join(sys.argv[1:])))
    print(report(load(path)))


if __name__ == "__main__":
    main()
