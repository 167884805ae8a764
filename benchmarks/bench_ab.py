"""Epoch times of this checkout against an earlier commit, measured side by side.

Each round runs one process per checkout, one after the other (this checkout, then the other),
and each process times interleaved training epochs of RecBole's BPR and of MF with SL, DSL (and DSL
with its reweighting only, and PSL tanh) at N = 1000, SL and DSL at N = 256 on one split of ml-100k (the first epoch of each is dropped). The earlier
commit is checked out into a temporary git worktree; both use this venv.

    python benchmarks/bench_ab.py --rev 5b4acac [--rounds 3] [--epochs 4]

Prints, per checkout and round, the median s/epoch of each variant and the DSL/SL ratios, then
the median over the rounds. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("BPR", "SL1000", "DSL1000", "DSLrw1000", "PSL1000", "SL256", "DSL256")


def child(repo: str, epochs: int) -> None:
    """Runs inside one checkout: print the median epoch time of each variant as JSON."""
    sys.path[:0] = [repo, f"{repo}/benchmarks"]
    import recbole_dsl

    assert recbole_dsl.__file__.startswith(repo), f"imported {recbole_dsl.__file__}, expected {repo}"
    from common import plugin_run, recbole_run, timed_epoch

    _, _, bpr, data = recbole_run("BPR")
    sl = {"rec_loss": "SL", "neg_num": 1000, "loss_tau": 0.1}
    trainers = {
        "BPR": bpr,
        "SL1000": plugin_run("BPR", data=data, **sl)[2],
        "DSL1000": plugin_run("BPR", data=data, **{**sl, "rec_loss": "DSL"})[2],
        "DSLrw1000": plugin_run("BPR", data=data, **{**sl, "rec_loss": "DSL", "dsl_temperature": False})[2],
        "PSL1000": plugin_run("BPR", data=data, **{**sl, "rec_loss": "PSL", "loss_tau": 0.05})[2],
        "SL256": plugin_run("BPR", data=data, **{**sl, "neg_num": 256})[2],
        "DSL256": plugin_run("BPR", data=data, **{**sl, "neg_num": 256, "rec_loss": "DSL"})[2],
    }
    times = {k: [] for k in trainers}
    for ep in range(epochs + 1):
        for k, tr in trainers.items():
            t = timed_epoch(tr, data[0], ep)
            if ep:
                times[k].append(t)
    print("RESULT " + json.dumps({k: statistics.median(v) for k, v in times.items()}))


def run(repo: str, epochs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", repo, "--epochs", str(epochs)],
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child for {repo} failed:\n{out.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default=None, help="the earlier commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per variant and process (after one warm-up)")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.epochs)
        return
    if not args.rev:
        ap.error("--rev is required")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import header

    with tempfile.TemporaryDirectory() as tmp:
        other = str(Path(tmp) / "other")
        subprocess.run(["git", "worktree", "add", "--detach", "-f", other, args.rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            res = {"this": [], args.rev: []}
            for rnd in range(args.rounds):
                for name, repo in (("this", str(ROOT)), (args.rev, other)):
                    r = run(repo, args.epochs)
                    res[name].append(r)
                    print(rnd, name, {k: round(v, 3) for k, v in r.items()}, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", other], cwd=ROOT, capture_output=True)
    lines = [header("python benchmarks/bench_ab.py " + " ".join(sys.argv[1:])), "",
             "| checkout | " + " | ".join(VARIANTS) + " | DSL/SL N=1000 | DSL reweighting only/SL | PSL/SL |"
             " DSL/SL N=256 | SL1000 vs BPR |", "|---|" + "---|" * (len(VARIANTS) + 5)]
    for name, rows in res.items():
        for i, r in enumerate(rows + ["median"]):
            if r == "median":
                r = {k: statistics.median(x[k] for x in rows) for k in VARIANTS}
                label = f"**{name}, median**"
            else:
                label = f"{name}, round {i + 1}"
            lines.append(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in VARIANTS)
                         + f" | {r['DSL1000'] / r['SL1000']:.2f}x | {r['DSLrw1000'] / r['SL1000']:.2f}x"
                         + f" | {r['PSL1000'] / r['SL1000']:.2f}x | {r['DSL256'] / r['SL256']:.2f}x"
                         + f" | {r['SL1000'] / r['BPR']:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
