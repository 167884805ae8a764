"""Robustness benchmark: the papers' protocols on MF + ml-100k (RecBole's default RS 0.8/0.1/0.1 split).

(a) SL, BSL, PSL, DSL under false-negative noise (10% of training held out as the pool, each
    negative drawn from the user's pool with p in {0, 0.1, 0.3}) and false-positive noise (random
    non-interacted items added at 0, 20%, 40% of each user's training count);
(b) the same losses on the popularity-shift OOD split (PSL's protocol, written as benchmark files);
(c) per-group NDCG@20 (10 item-popularity groups by training count, `within` mode) of BPR and SL
    on the clean split;
(d) seconds per training epoch of each sampler at N = 1000 (MF + SL), and the score-path
    crossover (full / gather / shared) on synthetic tables; (x) a finer crossover sweep.

Every run: model selection and early stopping on validation NDCG@20, test once with the best
checkpoint. Temperatures are fixed (the grid points of bench_quality.py), not tuned per setting.

    python benchmarks/bench_robustness.py                          # everything, 3 seeds, 100 epochs max
    python benchmarks/bench_robustness.py --epochs 15 --seeds 2020 --parts a b c d   # reduced
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, header  # noqa: E402

import torch  # noqa: E402
from recbole.data import create_dataset  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_dsl import Config, get_model, get_trainer  # noqa: E402
from recbole_dsl.protocols import data_preparation  # noqa: E402
from recbole_dsl.protocols.ood_split import write_ood_split  # noqa: E402

TRAIN = {"neg_num": 256, "learning_rate": 0.005, "train_batch_size": 2048, "embedding_size": 64, "stopping_step": 3,
         "metrics": ["Recall", "NDCG", "PopGroupNDCG"], "topk": [20], "valid_metric": "NDCG@20"}

LOSSES = {
    "BPR": {"rec_loss": "BPR"},
    "SL": {"rec_loss": "SL", "loss_tau": 0.2},
    # user-grouped batches: BSL's positive side (its answer to noisy positives) needs them
    # tau1 = 1.0: the validation choice of bench_quality.py for user-grouped BSL
    "BSL": {"rec_loss": "BSL", "bsl_form": "paper", "bsl_group_positives": True, "loss_tau": 0.2, "loss_tau_pos": 1.0,
            "train_batch_mode": "user"},
    "PSL": {"rec_loss": "PSL", "loss_tau": 0.1, "psl_activation": "tanh"},  # = SL's 0.2 (halved convention)
    # properties/loss/DSL.yaml defaults = bench_dsl.py's validation choice on MF: tau 0.3, kappa 2,
    # alpha 0.5, gamma 0.5 (spelled out so that the benchmark does not move with the defaults)
    "DSL": {"rec_loss": "DSL", "loss_tau": 0.3, "dsl_kappa": 2.0, "dsl_alpha": 0.5, "dsl_gamma": 0.5},
}
NOISE = {
    "clean": {},
    "FN p=0": {"fn_pool_ratio": 0.1, "fn_noise_p": 0.0},
    "FN p=0.1": {"fn_pool_ratio": 0.1, "fn_noise_p": 0.1},
    "FN p=0.3": {"fn_pool_ratio": 0.1, "fn_noise_p": 0.3},
    "FP 0.2": {"fp_noise_ratio": 0.2},
    "FP 0.4": {"fp_noise_ratio": 0.4},
}
# each noisy setting is compared with the setting of the same training data without noise
BASELINE = {"FN p=0.1": "FN p=0", "FN p=0.3": "FN p=0", "FP 0.2": "clean", "FP 0.4": "clean"}


def run(dataset="ml-100k", seed=2020, epochs=100, **kw):
    t = time.perf_counter()
    cfg = Config(model="BPR", dataset=dataset, cmd_args=[],
                 config_dict={**BASE, **TRAIN, "epochs": epochs, "seed": seed, "noise_seed": 2020, **kw})
    init_seed(cfg["seed"], cfg["reproducibility"])
    data = data_preparation(cfg, create_dataset(cfg))
    init_seed(cfg["seed"], cfg["reproducibility"])
    net = get_model("BPR")(cfg, data[0]._dataset).to(cfg["device"])
    trainer = get_trainer(cfg["MODEL_TYPE"], "BPR")(cfg, net)
    _, valid = trainer.fit(data[0], data[1], saved=True)
    test = trainer.evaluate(data[2], load_best_model=True)
    return {"valid": dict(valid), "test": dict(test), "epochs": max(trainer.train_loss_dict) + 1,
            "seconds": round(time.perf_counter() - t, 1)}


def fmt(values):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def mean(values):
    return statistics.mean(values) if values else float("nan")


# ------------------------------------------------------------------------------------------ parts
def part_a(results, seeds, epochs, losses, log):
    for noise, keys in NOISE.items():
        for loss in losses:
            for seed in seeds:
                key = f"a|{loss}|{noise}|{seed}"
                if key not in results:
                    results[key] = run(seed=seed, epochs=epochs, **LOSSES[loss], **keys)
                    log(key, results[key])


def table_a(results, seeds, losses):
    out = ["| loss | " + " | ".join(NOISE) + " |", "|---" * (len(NOISE) + 1) + "|"]
    for loss in losses:
        cells = []
        for noise in NOISE:
            vals = [results[f"a|{loss}|{noise}|{s}"]["test"]["ndcg@20"] for s in seeds if f"a|{loss}|{noise}|{s}" in results]
            cell = fmt(vals)
            base = BASELINE.get(noise)
            if base and vals:
                bvals = [results[f"a|{loss}|{base}|{s}"]["test"]["ndcg@20"] for s in seeds if f"a|{loss}|{base}|{s}" in results]
                if bvals:
                    cell += f" ({100 * (mean(vals) / mean(bvals) - 1):+.1f}%)"
            cells.append(cell)
        out.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def part_b(results, seeds, epochs, losses, log, split_seed=2024):
    folder = Path(tempfile.mkdtemp(prefix="ood_"))
    stats = write_ood_split("ml-100k", str(folder), seed=split_seed, name="ml-100k-ood")
    results["b|split"] = {k: v for k, v in stats.items() if k not in ("yaml", "source", "folder")}
    split = {"data_path": str(folder), "benchmark_filename": ["train", "valid", "test"]}
    for loss in losses:
        for seed in seeds:
            key = f"b|{loss}|{seed}"
            if key not in results:
                results[key] = run(dataset="ml-100k-ood", seed=seed, epochs=epochs, **LOSSES[loss], **split)
                log(key, results[key])


def table_b(results, seeds, losses):
    out = ["| loss | valid NDCG@20 (in distribution) | test Recall@20 (OOD) | test NDCG@20 (OOD) | vs SL |",
           "|---|---|---|---|---|"]
    sl = [results[f"b|SL|{s}"]["test"]["ndcg@20"] for s in seeds if f"b|SL|{s}" in results]
    for loss in losses:
        rs = [results[f"b|{loss}|{s}"] for s in seeds if f"b|{loss}|{s}" in results]
        nd = [r["test"]["ndcg@20"] for r in rs]
        rel = f"{100 * (mean(nd) / mean(sl) - 1):+.1f}%" if sl and nd and loss != "SL" else ""
        out.append(f"| {loss} | {fmt([r['valid']['ndcg@20'] for r in rs])} | {fmt([r['test']['recall@20'] for r in rs])} "
                   f"| {fmt(nd)} | {rel} |")
    return "\n".join(out)


def part_c(results, seeds, epochs, log):
    for loss in ("BPR", "SL"):
        for seed in seeds:
            key = f"a|{loss}|clean|{seed}"
            if key not in results:
                results[key] = run(seed=seed, epochs=epochs, **LOSSES[loss])
                log(key, results[key])


def table_c(results, seeds):
    out = ["| group (1 = least popular) | " + " | ".join(str(g) for g in range(1, 11)) + " | overall |",
           "|---" * 12 + "|"]
    for loss in ("BPR", "SL"):
        rs = [results[f"a|{loss}|clean|{s}"]["test"] for s in seeds if f"a|{loss}|clean|{s}" in results]
        if not rs:
            continue
        cells = [f"{mean([r[f'popgroupndcg_g{g}@20'] for r in rs]):.4f}" for g in range(1, 11)]
        out.append(f"| {loss} | " + " | ".join(cells) + f" | {mean([r['ndcg@20'] for r in rs]):.4f} |")
    return "\n".join(out)


SAMPLER_RUNS = {
    "uniform": {"neg_sampler": "uniform"},
    "popularity (alpha 1, log-q)": {"neg_sampler": "popularity", "neg_pop_alpha": 1.0, "sl_log_q_correction": True},
    "in_batch (N = B = 2048)": {"neg_sampler": "in_batch"},
    "shared": {"neg_sampler": "shared"},
    "uniform + FN noise p=0.3": {"neg_sampler": "uniform", "fn_pool_ratio": 0.1, "fn_noise_p": 0.3},
}


def part_d_epochs(reps=3):
    """Seconds per training epoch of MF + SL, N = 1000, one split, epochs interleaved."""
    trainers = {}
    for name, kw in SAMPLER_RUNS.items():
        cfg = Config(model="BPR", dataset="ml-100k", cmd_args=[],
                     config_dict={**BASE, **TRAIN, "rec_loss": "SL", "loss_tau": 0.2, "neg_num": 1000, **kw})
        init_seed(cfg["seed"], cfg["reproducibility"])
        data = data_preparation(cfg, create_dataset(cfg))
        net = get_model("BPR")(cfg, data[0]._dataset)
        trainers[name] = (get_trainer(cfg["MODEL_TYPE"], "BPR")(cfg, net), data[0], net.rec_adapter.score_path)
    times = {k: [] for k in trainers}
    for rep in range(reps + 1):  # the first round warms up and is dropped
        for name, (tr, train, _) in trainers.items():
            t = time.perf_counter()
            tr._train_epoch(train, rep)
            if rep:
                times[name].append(time.perf_counter() - t)
    return {k: (statistics.median(v), trainers[k][2]) for k, v in times.items()}


def part_d_crossover(reps=3, B=1024, d=64, sizes=None):
    """Seconds per batch of the full / gather / shared score paths. ``sizes``: (n_items, [N, ...])
    pairs; by default a coarse grid (part d), part x sweeps n_items / N from 32 to 80."""
    from recbole_dsl.losses import sl_loss
    from recbole_dsl.scoring import batch_scores

    rows = []
    for n_items, ns in sizes or [(n, (16, 128, 1000)) for n in (1_683, 20_000, 100_000)]:
        table = torch.randn(n_items, d, requires_grad=True)
        for n in ns:
            u = torch.randn(B, d, requires_grad=True)
            pos = torch.randint(1, n_items, (B,))
            per_row = torch.randint(1, n_items, (B, n))
            shared = torch.randint(1, n_items, (n,)).expand(B, n)
            res = {}
            for path, neg in (("full", per_row), ("gather", per_row), ("shared", shared)):
                ts = []
                for _ in range(reps + 1):
                    t = time.perf_counter()
                    r = batch_scores(u, table, pos, neg, "cosine", "full" if path == "shared" else path)
                    p, q = r.pos, r.neg
                    sl_loss(p, q, 0.1).mean().backward()
                    ts.append(time.perf_counter() - t)
                res[path] = statistics.median(ts[1:])
            rows.append((n_items, n, res["full"], res["gather"], res["shared"]))
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--losses", nargs="+", default=["BPR", "SL", "BSL", "PSL", "DSL"])
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c", "d", "x"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_out/robustness.md")
    ap.add_argument("--json", default="bench_out/robustness.json", help="raw results; reused (resumed) if present")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    jpath = Path(args.json)
    jpath.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(jpath.read_text()) if jpath.is_file() else {}

    def log(key, res):
        print(key, {k: res["test"][k] for k in ("recall@20", "ndcg@20")}, f"epochs {res['epochs']}, {res['seconds']} s",
              flush=True)
        jpath.write_text(json.dumps(results, indent=1))

    cmd = "python benchmarks/bench_robustness.py " + " ".join(sys.argv[1:])
    out = [header(cmd), f"settings: MF (RecBole BPR model), {json.dumps({k: v for k, v in TRAIN.items() if k != 'metrics'})}, "
           f"max epochs {args.epochs}, seeds {args.seeds}; losses {json.dumps({k: LOSSES[k] for k in args.losses})}\n"]
    if "a" in args.parts:
        part_a(results, args.seeds, args.epochs, args.losses, log)
        out.append("(a) test NDCG@20 under noise (in brackets: change vs the same loss without noise on the same "
                   "training data: FN vs `FN p=0`, FP vs `clean`)\n")
        out.append(table_a(results, args.seeds, args.losses))
    if "b" in args.parts:
        part_b(results, args.seeds, args.epochs, args.losses, log)
        s = results["b|split"]
        out.append(f"\n(b) popularity-shift OOD split (seed {s['seed']}: {s['train_interactions']} / "
                   f"{s['valid_interactions']} / {s['test_interactions']} interactions; item-count Gini train "
                   f"{s['train_item_gini']:.3f}, test {s['test_item_gini']:.3f}; mean training popularity of the "
                   f"items of train {s['train_mean_train_popularity']:.1f}, test {s['test_mean_train_popularity']:.1f})\n")
        out.append(table_b(results, args.seeds, args.losses))
    if "c" in args.parts:
        part_c(results, args.seeds, args.epochs, log)
        out.append("\n(c) test NDCG@20 per item-popularity group (PopGroupNDCG, `within` mode: each group's own "
                   "test items), clean split\n")
        out.append(table_c(results, args.seeds))
    if "d" in args.parts:
        ep = part_d_epochs()
        out.append("\n(d) seconds per training epoch, MF + SL, N = 1000, batch 2048 (median of 3 interleaved epochs)\n")
        out.append("| sampler | s/epoch | score path |\n|---|---|---|")
        for k, (v, path) in ep.items():
            out.append(f"| {k} | {v:.2f} | {'one [B, N] product' if 'in_batch' in k or k == 'shared' else path} |")
        rows = part_d_crossover()
        out.append("\nscore-path crossover: seconds per batch (B = 1024, d = 64, SL forward + backward, cosine)\n")
        out.append("| n_items | N | n_items / N | full | gather | shared | faster of full / gather |\n|---|---|---|---|---|---|---|")
        for n_items, n, f, g, s in rows:
            out.append(f"| {n_items} | {n} | {n_items / n:.0f} | {f:.4f} | {g:.4f} | {s:.4f} | {'full' if f < g else 'gather'} |")
        results["d"] = {"epochs": {k: v for k, (v, _) in ep.items()}, "crossover": rows}
        jpath.write_text(json.dumps(results, indent=1))
    if "x" in args.parts:
        rows = part_d_crossover(sizes=[(n, [n // r for r in (32, 48, 64, 80)]) for n in (20_000, 100_000)])
        out.append("\n(x) score-path crossover around the break-even: seconds per batch (B = 1024, d = 64, SL "
                   "forward + backward, cosine)\n")
        out.append("| n_items | N | n_items / N | full | gather | shared | faster of full / gather |\n|---|---|---|---|---|---|---|")
        for n_items, n, f, g, s in rows:
            out.append(f"| {n_items} | {n} | {n_items / n:.0f} | {f:.4f} | {g:.4f} | {s:.4f} | {'full' if f < g else 'gather'} |")
        results["x"] = rows
        jpath.write_text(json.dumps(results, indent=1))
    text = "\n".join(out) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
