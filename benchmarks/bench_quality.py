"""Quality benchmark: MF on ml-100k, RecBole's default split (RS 0.8/0.1/0.1, seed 2020).

For each variant the temperature is chosen on the validation split (training seed 2020), then
the chosen setting is trained with 5 seeds on the same split; test Recall@20 / NDCG@20 are
reported as mean and standard deviation. No test number takes part in the choice.

    python benchmarks/bench_quality.py [--seeds 5] [--out bench_out/quality.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, header, plugin_run, recbole_run  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

# RecBole's defaults for its own BPR (300 epochs, early stop after 10 evaluations without gain);
# the softmax losses converge in far fewer epochs, so they stop after 5.
TRAIN = {"epochs": 300, "stopping_step": 10, "learning_rate": 0.001, "train_batch_size": 2048, "embedding_size": 64}
PLUGIN = {**TRAIN, "neg_num": 256, "epochs": 100, "stopping_step": 5}

# variant -> (fixed keys, grid over which the validation choice is made)
VARIANTS = {
    "BPR (plugin, 256 negs, dot)": ({"rec_loss": "BPR"}, [{}]),
    "SL": ({"rec_loss": "SL"}, [{"loss_tau": t} for t in (0.05, 0.1, 0.2)]),
    # BSL: tau2 (negative side) on SL's grid points, tau1 at or above it (c = tau2/tau1 in 0.5..1).
    "BSL per-row": ({"rec_loss": "BSL", "bsl_group_positives": False},
                    [{"loss_tau": t2, "loss_tau_pos": t1} for t2, t1 in ((0.1, 0.1), (0.1, 0.2), (0.2, 0.2))]),
    "BSL user-grouped": ({"rec_loss": "BSL", "train_batch_mode": "user", "positives_per_user": 4},
                         [{"loss_tau": t2, "loss_tau_pos": t1} for t2, t1 in ((0.1, 0.1), (0.1, 0.2), (0.2, 0.2))]),
    # PSL's halved convention: 0.05 here is SL's 0.1.
    "PSL tanh": ({"rec_loss": "PSL", "psl_activation": "tanh"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
    "PSL atan": ({"rec_loss": "PSL", "psl_activation": "atan"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
    "PSL relu": ({"rec_loss": "PSL", "psl_activation": "relu"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
}


def train_eval(kind, data, seed, **kw):
    t = time.perf_counter()
    if kind == "recbole":
        cfg, net, trainer, data = recbole_run("BPR", **{**TRAIN, **kw})
    else:
        cfg, net, trainer, data = plugin_run("BPR", data=data, **{**PLUGIN, **kw})
    init_seed(seed, True)
    best, valid = trainer.fit(data[0], data[1], saved=True)
    test = trainer.evaluate(data[2], load_best_model=True)
    epochs = max(trainer.train_loss_dict) + 1
    return {"valid": dict(valid), "test": dict(test), "epochs": epochs, "seconds": time.perf_counter() - t}, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="bench_out/quality.json")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    seeds = [2020 + i for i in range(args.seeds)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results = {}
    # RecBole's own BPR model: its sampler (1 negative), its loss, no temperature.
    runs, data = [], None
    if args.only is None or "RecBole BPR" in args.only:
        for s in seeds:
            r, _ = train_eval("recbole", None, s)
            runs.append(r)
            print("RecBole BPR", s, r["test"], r["epochs"], flush=True)
        results["RecBole BPR (own model, 1 neg)"] = {"chosen": {}, "runs": runs, "grid": []}
    _, _, _, data = plugin_run("BPR", rec_loss="SL")  # the same split for every plugin run
    for name, (fixed, grid) in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        scored = []
        for point in grid:
            r, _ = train_eval("plugin", data, seeds[0], **fixed, **point)
            scored.append((r["valid"]["ndcg@20"], point, r))
            print(name, point, "valid", r["valid"], flush=True)
        _, chosen, first = max(scored, key=lambda x: x[0])
        runs = [first] + [train_eval("plugin", data, s, **fixed, **chosen)[0] for s in seeds[1:]]
        results[name] = {"chosen": chosen, "runs": runs, "grid": [(v, p) for v, p, _ in scored]}
        print(name, "chosen", chosen, [r["test"] for r in runs], flush=True)
        json.dump(results, open(args.out, "w"), indent=1)
    json.dump(results, open(args.out, "w"), indent=1)
    print(report(results, seeds))


def report(results, seeds):
    def ms(xs):
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"

    ref = None
    lines = ["| variant | chosen on validation | test Recall@20 | test NDCG@20 | NDCG vs RecBole BPR | epochs (mean) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        rec = [x["test"]["recall@20"] for x in r["runs"]]
        nd = [x["test"]["ndcg@20"] for x in r["runs"]]
        ref = ref or statistics.mean(nd)
        chosen = ", ".join(f"{k}={v}" for k, v in r["chosen"].items()) or "-"
        lines.append(f"| {name} | {chosen} | {ms(rec)} | {ms(nd)} | {statistics.mean(nd) / ref - 1:+.1%} | "
                     f"{statistics.mean(x['epochs'] for x in r['runs']):.0f} |")
    return "\n".join(lines) + f"\n\n{len(seeds)} training seeds {seeds[0]}..{seeds[-1]} on one split.\n"


if __name__ == "__main__":
    main()
