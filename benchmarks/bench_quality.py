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
from common import choose, load_results, plugin_run, recbole_run, repeat, save_results  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

# RecBole's defaults for its own BPR (300 epochs, early stop after 10 evaluations without gain);
# the softmax losses converge in far fewer epochs, so they stop after 5.
TRAIN = {"epochs": 300, "stopping_step": 10, "learning_rate": 0.001, "train_batch_size": 2048, "embedding_size": 64}
PLUGIN = {**TRAIN, "neg_num": 256, "epochs": 100, "stopping_step": 5}

# variant -> (fixed keys, grid over which the validation choice is made)
VARIANTS = {
    "BPR (plugin, 256 negs, dot)": ({"rec_loss": "BPR"}, [{}]),
    "SL": ({"rec_loss": "SL"}, [{"loss_tau": t} for t in (0.1, 0.2)]),
    # BSL: tau2 (negative side) on SL's grid points, tau1 at or above it (c = tau2/tau1 in 0.5..1).
    "BSL per-row": ({"rec_loss": "BSL", "bsl_form": "paper", "bsl_group_positives": False},
                    [{"loss_tau": t2, "loss_tau_pos": t1} for t2, t1 in ((0.2, 0.2), (0.2, 0.25))]),
    # User-grouped BSL lost ground as tau1 fell (the positive LME then favours a user's easy
    # positives), so its grid also reaches tau1 well above tau2.
    "BSL user-grouped": ({"rec_loss": "BSL", "bsl_form": "paper", "bsl_group_positives": True,
                          "train_batch_mode": "user", "positives_per_user": 4},
                         [{"loss_tau": t2, "loss_tau_pos": t1} for t2, t1 in ((0.2, 0.2), (0.2, 0.25), (0.2, 0.5), (0.2, 1.0))]),
    # Diagnostic: SL on the same user-grouped batches tells how much of user-grouped BSL's gap
    # to SL comes from the batch composition rather than from the bilateral positive side.
    "SL user-grouped (diagnostic)": ({"rec_loss": "SL", "train_batch_mode": "user", "positives_per_user": 4},
                                     [{"loss_tau": 0.2}]),
    # The official code's form (bsl_form: official): one temperature t1, the negative term weighted
    # by t2; its README's MF settings are t1 0.08-0.17, t2 1.06-1.22.
    "BSL official per-row": ({"rec_loss": "BSL", "bsl_form": "official", "bsl_group_positives": False},
                             [{"bsl_t1": t1, "bsl_t2": t2} for t1 in (0.1, 0.2) for t2 in (1.1, 1.2)]
                             + [{"bsl_t1": t1, "bsl_t2": t2} for t1, t2 in ((0.25, 1.1), (0.25, 1.2), (0.2, 1.05),
                                                                          (0.25, 1.05))]),
    # SL over a grid as wide as the official BSL's (its only parameter is the temperature).
    "SL wide grid": ({"rec_loss": "SL"}, [{"loss_tau": t} for t in (0.1, 0.15, 0.2, 0.25, 0.3)]),
    "BSL official user-grouped": ({"rec_loss": "BSL", "bsl_form": "official", "bsl_group_positives": True,
                                   "train_batch_mode": "user",
                                   "positives_per_user": 4},
                                  [{"bsl_t1": t1, "bsl_t2": t2} for t1 in (0.1, 0.2) for t2 in (1.1, 1.2)]),
    # PSL's halved convention: 0.05 here is SL's 0.1, 0.1 is SL's 0.2.
    "PSL tanh": ({"rec_loss": "PSL", "psl_activation": "tanh"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
    "PSL atan": ({"rec_loss": "PSL", "psl_activation": "atan"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
    "PSL relu": ({"rec_loss": "PSL", "psl_activation": "relu"}, [{"loss_tau": t} for t in (0.05, 0.1)]),
    # sparse_update (lazy Adam on row-sparse gradients) against SL's dense Adam: the gather path,
    # so that the item table's gradient is row-sparse too (ml-100k's auto path is the full one).
    "SL, sparse_update (gather path)": ({"rec_loss": "SL", "score_path": "gather", "sparse_update": True},
                                        [{"loss_tau": t} for t in (0.1, 0.2)]),
}


def train_eval(kind, data, seed, **kw):
    """One run on the prepared split ``data``; ``seed`` sets everything else (model initialisation,
    negative draws, batch order), as RecBole's `seed` key does."""
    t = time.perf_counter()
    if kind == "recbole":
        cfg, net, trainer, data = recbole_run("BPR", data=data, **{**TRAIN, **kw, "seed": seed})
    else:
        cfg, net, trainer, data = plugin_run("BPR", data=data, **{**PLUGIN, **kw, "seed": seed})
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
    ap.add_argument("--skip-recbole", action="store_true", help="do not train RecBole's own BPR")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--report", default=None, help="only print the table of a (possibly partial) results file")
    args = ap.parse_args()
    if args.report:
        print(report(json.load(open(args.report))))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seeds = [2020 + i for i in range(args.seeds)]
    # Resumable: what the results file already holds (same grid point, same seed) is not rerun.
    results = load_results(args.out)

    def save():
        save_results(results, args.out)

    # RecBole's own BPR model: its sampler (1 negative), its loss, no temperature.
    if not args.skip_recbole and (args.only is None or "RecBole BPR" in args.only):
        entry = results.setdefault("RecBole BPR (own model, 1 neg)", {"chosen": {}, "runs": [], "grid": []})
        rdata = recbole_run("BPR", **TRAIN)[3]  # the split of seed 2020, with RecBole's sampler
        repeat(entry, seeds, lambda s, p: train_eval("recbole", rdata, s)[0], save)
    _, _, _, data = plugin_run("BPR", rec_loss="SL")  # the same split for every plugin run
    names = [n for n in VARIANTS if args.only is None or n in args.only]

    def train(name):
        return lambda s, point: train_eval("plugin", data, s, **VARIANTS[name][0], **point)[0]

    # Phase 1: every variant's validation choice (first seed); phase 2: the other seeds,
    # round-robin, so an interrupted run still reports every variant.
    for name in names:
        choose(results.setdefault(name, {}), VARIANTS[name][1], seeds[0], train(name), save)
    for s in seeds[1:]:
        for name in names:
            repeat(results[name], [s], train(name), save)
    print(report(results, seeds))


def report(results, seeds=None):
    def ms(xs):
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"

    own = "RecBole BPR (own model, 1 neg)"
    order = [own] * (own in results) + [k for k in results if k != own]
    ref = statistics.mean(x["test"]["ndcg@20"] for x in results[order[0]]["runs"]) if results else None
    lines = ["| variant | chosen on validation | test Recall@20 | test NDCG@20 | NDCG vs RecBole BPR | epochs (mean) |",
             "|---|---|---|---|---|---|"]
    for name in order:
        r = results[name]
        rec = [x["test"]["recall@20"] for x in r["runs"]]
        nd = [x["test"]["ndcg@20"] for x in r["runs"]]
        chosen = ", ".join(f"{k}={v}" for k, v in r["chosen"].items()) or "-"
        lines.append(f"| {name} | {chosen} | {ms(rec)} | {ms(nd)} | {statistics.mean(nd) / ref - 1:+.1%} | "
                     f"{statistics.mean(x['epochs'] for x in r['runs']):.0f} |")
    n = sorted({len(r["runs"]) for r in results.values()})
    return "\n".join(lines) + f"\n\nseeds per variant: {n} (2020, 2021, ...), one split.\n"


if __name__ == "__main__":
    main()
