"""ml-100k: the exact softmax (`neg_sampler: all`) against SL with 1000 uniform negatives.

MF (RecBole's BPR model), SL with the plugin's defaults (cosine, tau from properties/loss/SL.yaml
unless --tau), RecBole's default split, lr 1e-3, batch 2048; each variant trains to early stopping
on validation NDCG@20 (at most --epochs, stop after 5 validations without gain), then its best
checkpoint is scored on test. Epoch times: median training epoch of each run, next to RecBole's
BPR epoch timed in the same process.

    python benchmarks/bench_scale_all.py [--epochs 100] [--tau 0.2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, plugin_run, recbole_run, timed_epoch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--tau", type=float, default=0.2)
    a = ap.parse_args()
    kw = dict(train_batch_size=2048, learning_rate=1e-3, stopping_step=5, epochs=a.epochs)
    _, _, bpr, bdata = recbole_run("BPR", **kw)
    bpr_epoch = statistics.median(timed_epoch(bpr, bdata[0], e) for e in range(5))
    rows = []
    for name, extra in (("SL, uniform N=1000", {"neg_sampler": "uniform", "neg_num": 1000}),
                        ("SL, all (exact softmax)", {"neg_sampler": "all"})):
        _, _, tr, data = plugin_run("BPR", **kw, rec_loss="SL", loss_tau=a.tau, **extra)
        times = []
        orig = tr._train_epoch

        def timed(*args, _orig=orig, **k):
            t = time.perf_counter()
            out = _orig(*args, **k)
            times.append(time.perf_counter() - t)
            return out

        tr._train_epoch = timed
        best, valid = tr.fit(data[0], data[1], saved=True)
        test = tr.evaluate(data[2], load_best_model=True)
        rows.append((name, statistics.median(times), len(times), valid["ndcg@20"], test["ndcg@20"], test["recall@20"]))
        print(rows[-1], flush=True)
    print(header("python benchmarks/bench_scale_all.py " + " ".join(sys.argv[1:])))
    print(f"RecBole BPR epoch (same process): {bpr_epoch:.3f} s\n")
    print("| variant | s/epoch | vs RecBole BPR | epochs | best valid NDCG@20 | test NDCG@20 | test Recall@20 |")
    print("|---|---|---|---|---|---|---|")
    for name, t, n, v, te, tr_ in rows:
        print(f"| {name} | {t:.2f} | {t / bpr_epoch:.1f}x | {n} | {v:.4f} | {te:.4f} | {tr_:.4f} |")


if __name__ == "__main__":
    main()
