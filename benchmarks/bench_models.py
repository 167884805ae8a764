"""Every supported model on ml-100k: its built-in loss versus SL and BSL through the plugin.

For each model (RecBole's default split of ml-100k, RS 0.8/0.1/0.1, one seed) this trains:
- the model with its built-in loss and RecBole's own negative sampling (rec_loss unset), and
- SL and BSL through the plugin, each at every point of a small temperature grid; the point
  with the best validation NDCG@20 is kept (the test split plays no part in the choice).
It reports test NDCG@20 (checkpoint with the best validation NDCG@20; early stopping on it) and
the mean training seconds per epoch (evaluation excluded) of each run.

Model hyper-parameters are RecBole's defaults for each model (its YAML file) unless overridden
in MODEL_KW below; every run shares the learning rate, batch size and epoch cap given here.
Temperatures: scores bounded to [-1, 1] (embedding models' cosine, the pair scorers' tanh of
their logits, pair_score_fn) use the grid --cos-taus; raw logits (autoencoders, pair scorers with
--pair-score-fn logit) use --logit-taus. BSL uses the same value on
both sides (loss_tau = loss_tau_pos) and user-grouped batches (train_batch_mode: user).

    python benchmarks/bench_models.py [--models BPR LightGCN ...] [--epochs 10] [--neg-num 64]
        [--pair-neg-num 8] [--time-limit 600] [--threads 1] [--out bench_out/models.json]
    python benchmarks/bench_models.py --timing     # re-measure s/epoch only, on an idle machine

Results are appended to the JSON file after every run; a rerun skips what is already there, so
an interrupted benchmark continues where it stopped. `--report` prints the Markdown table only.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BASE, header  # noqa: E402

import torch  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_dsl import ADAPTERS, Config, get_model, get_trainer  # noqa: E402
from recbole_dsl.adapters import kind_of  # noqa: E402
from recbole_dsl.adapters.graph import ncl_run_kmeans_torch  # noqa: E402

# Shared training settings (all runs; the built-in runs use RecBole's default sampling).
TRAIN = {"learning_rate": 0.002, "train_batch_size": 2048, "stopping_step": 3, "eval_step": 1, "seed": 2020}
# Smaller than RecBole's defaults where a default would not run in reasonable time on a CPU.
# Pair scorers: RecBole evaluates them by scoring every (user, item) pair of an evaluation batch
# at once, ConvNCF with a d x d interaction map per pair: smaller evaluation batches bound memory.
MODEL_KW = {
    "NCL": {"num_clusters": 100},
    "ConvNCF": {"train_batch_size": 512, "eval_batch_size": 16384},
    "NAIS": {"train_batch_size": 128},
    "NNCF": {"train_batch_size": 512, "eval_batch_size": 65536},
}
# Models RecBole trains on its UserDataLoader: train_batch_size counts users.
USER_LOADER = {"MultiVAE", "MultiDAE", "MacridVAE", "RecVAE", "RaCT", "CDAE", "ENMF"}
USER_BATCH = 128


class _Stop(Exception):
    pass


def _loaders(model, cfg, cache):
    key = ("user" if model in USER_LOADER else "inter", cfg["train_batch_size"], cfg["rec_loss"] is None,
           cfg["MODEL_INPUT_TYPE"], str(cfg["train_neg_sample_args"]))
    if key not in cache:
        init_seed(cfg["seed"], True)
        cache[key] = data_preparation(cfg, create_dataset(cfg))
    return cache[key]


def _build(model, settings, args, cache, epochs):
    """(net, trainer, (train, valid, test)) with the benchmark's shared settings."""
    kw = {**BASE, **TRAIN, "epochs": epochs, "neg_num": _neg_num(model, args), "checkpoint_dir": args.checkpoint_dir,
          **MODEL_KW.get(model, {}), **settings}
    if model in USER_LOADER:
        kw["train_batch_size"] = USER_BATCH
    if model == "RaCT":  # actor pre-training: RaCTTrainer runs pretrain_epochs without validation
        kw.update(pretrain_epochs=epochs, save_step=epochs)
    cfg = Config(model, "ml-100k", config_dict=kw, cmd_args=[])
    data = _loaders(model, cfg, cache)
    init_seed(cfg["seed"], True)
    net = get_model(model)(cfg, data[0]._dataset).to(cfg["device"])
    if model == "NCL" and cfg["rec_loss"] is None:
        _torch_kmeans(net)
    return net, get_trainer(cfg["MODEL_TYPE"], model)(cfg, net), data


def run_one(model, settings, args, cache):
    _, trainer, (train, valid, test) = _build(model, settings, args, cache, args.epochs)
    epoch_s = []
    inner = trainer._train_epoch

    def timed(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        epoch_s.append(time.perf_counter() - t)
        return out

    trainer._train_epoch = timed
    start = time.perf_counter()

    def budget(epoch_idx, valid_score):
        if time.perf_counter() - start > args.time_limit:
            raise _Stop()

    stopped = False
    try:
        _, valid_result = trainer.fit(train, valid, saved=True, callback_fn=budget)
    except _Stop:
        stopped, valid_result = True, trainer.best_valid_result
    if model == "RaCT":
        valid_result = trainer.evaluate(valid, load_best_model=False)
        test_result = trainer.evaluate(test, load_best_model=False)
    else:
        test_result = trainer.evaluate(test, load_best_model=True)
    return {
        "valid_ndcg": float(valid_result["ndcg@20"]), "test_ndcg": float(test_result["ndcg@20"]),
        "test_recall": float(test_result["recall@20"]), "epochs": len(epoch_s),
        "sec_per_epoch": sum(epoch_s) / max(1, len(epoch_s)), "time_limited": stopped,
        "wall_s": time.perf_counter() - start,
    }


def time_one(model, settings, args, cache, budget_s=60.0) -> float:
    """Seconds of one training epoch (the second, after a warm-up epoch; the first alone when it
    already took more than ``budget_s``), nothing else running in this process."""
    net, trainer, (train, _, _) = _build(model, settings, args, cache, 2)
    if model == "NCL":  # NCLTrainer runs the E-step (k-means) before its epochs; not timed here
        net.e_step()
    t = time.perf_counter()
    trainer._train_epoch(train, 0)
    first = time.perf_counter() - t
    if first > budget_s:
        return first
    if model == "NCL":
        net.e_step()
    t = time.perf_counter()
    trainer._train_epoch(train, 1)
    return time.perf_counter() - t


def _neg_num(model, args):
    return args.pair_neg_num if kind_of(model) == "pair" and args.pair_neg_num else args.neg_num


def _torch_kmeans(net):
    try:
        import faiss  # noqa: F401
    except ImportError:  # the built-in run gets the plugin's torch k-means too
        from types import MethodType

        net.run_kmeans = MethodType(ncl_run_kmeans_torch, net)


def grid(model, loss, args):
    kind = kind_of(model)
    # Pair scorers' tanh scores lie in (-1, 1) like a cosine: they share the cosine grid.
    bounded = kind == "embedding" or (kind == "pair" and args.pair_score_fn == "tanh")
    taus = args.cos_taus if bounded else args.logit_taus
    extra = {"pair_score_fn": args.pair_score_fn} if kind == "pair" else {}
    if loss == "SL":
        return [{"rec_loss": "SL", "loss_tau": t, **extra} for t in taus]
    return [{"rec_loss": "BSL", "bsl_form": "paper", "bsl_group_positives": True, "loss_tau": t, "loss_tau_pos": t,
             "train_batch_mode": "user", **extra} for t in taus]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--neg-num", type=int, default=64)
    ap.add_argument("--pair-neg-num", type=int, default=None,
                    help="negatives for the pair scorers (default --neg-num): they run 1 + N forwards per row")
    ap.add_argument("--cos-taus", type=float, nargs="*", default=[0.1, 0.2])
    ap.add_argument("--logit-taus", type=float, nargs="*", default=[0.5, 1.0])
    ap.add_argument("--pair-score-fn", default="tanh", choices=["tanh", "logit"],
                    help="pair_score_fn of the pair scorers' SL/BSL runs (tanh: the cosine grid; logit: --logit-taus)")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds of one run before it stops at the "
                    "next evaluation (its best checkpoint so far is tested)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", nargs="*", default=["built-in", "SL", "BSL"],
                    help="which runs of each model (to split one model's runs over processes; give each its own --out)")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) for every run, built-in included (the plugin's trainer "
                         "does it for SL/BSL by default, cpu_flush_denormal); NAIS needs it on CPU")
    ap.add_argument("--out", default="bench_out/models.json")
    ap.add_argument("--checkpoint-dir", default="/tmp/recbole_dsl_bench_models")
    ap.add_argument("--report", action="store_true", help="only print the table of --out")
    ap.add_argument("--timing", action="store_true",
                    help="only re-measure seconds per epoch (built-in, and SL/BSL at their chosen tau) of the "
                         "models already in --out, one epoch after a warm-up epoch; run it on an idle machine")
    args = ap.parse_args()
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.timing:
        torch.set_num_threads(args.threads)
        meta = results.get("_meta", {})  # the settings the quality runs used
        args.neg_num = meta.get("neg_num", args.neg_num)
        args.pair_neg_num = meta.get("pair_neg_num", args.pair_neg_num)
        cache = {}
        for model in args.models or ADAPTERS.names():
            row = results.get(model, {})
            timing = row.setdefault("timing", {})
            for loss in ("built-in", "SL", "BSL"):
                if loss in timing:
                    continue
                if loss == "built-in":
                    settings = {"rec_loss": None} if "built-in" in row else None
                else:
                    tau, r = _best(row, loss)
                    settings = None if r is None else next(
                        json.loads(k.split(" ", 1)[1]) for k, v in row.items() if v is r)
                if settings is None:
                    continue
                try:
                    timing[loss] = time_one(model, settings, args, cache)
                except Exception as e:
                    timing[loss] = {"error": f"{type(e).__name__}: {e}"[:300]}
                print(model, loss, timing[loss], flush=True)
                results[model] = row
                results["_timing_meta"] = {"header": header("python benchmarks/bench_models.py --timing"),
                                           "threads": args.threads}
                out.write_text(json.dumps(results, indent=1))
        print(report(results))
        return
    if not args.report:
        torch.set_num_threads(args.threads)
        out.parent.mkdir(parents=True, exist_ok=True)
        cache = {}
        for model in args.models or ADAPTERS.names():
            row = results.setdefault(model, {})
            runs = [("built-in", {"rec_loss": None})] + [(f"{loss} {json.dumps(p)}", p)
                                                          for loss in ("SL", "BSL") for p in grid(model, loss, args)]
            runs = [(n, p) for n, p in runs if n.split(" ")[0] in args.losses]
            for name, settings in runs:
                if name in row:
                    continue
                try:
                    row[name] = run_one(model, settings, args, cache)
                except Exception as e:  # a run that fails is reported, the benchmark goes on
                    row[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                print(model, name, row[name], flush=True)
                results["_meta"] = {"epochs": args.epochs, "neg_num": args.neg_num,
                                    "pair_neg_num": args.pair_neg_num or args.neg_num, "cos_taus": args.cos_taus,
                                    "logit_taus": args.logit_taus, "time_limit": args.time_limit,
                                    "pair_score_fn": args.pair_score_fn,
                                    "threads": args.threads, "train": TRAIN, "model_kw": MODEL_KW,
                                    "user_batch": USER_BATCH, "flush_denormal": args.flush_denormal}
                out.write_text(json.dumps(results, indent=1))
    print(report(results))


def _best(row, loss):
    runs = [(k, v) for k, v in row.items() if k.startswith(loss + " ") and "error" not in v]  # not "timing"
    if not runs:
        return None, None
    name, r = max(runs, key=lambda kv: kv[1]["valid_ndcg"])
    return json.loads(name.split(" ", 1)[1])["loss_tau"], r


def report(results) -> str:
    lines = ["| model | kind | built-in: test NDCG@20 | s/epoch | SL: test NDCG@20 (tau) | s/epoch | "
             "BSL: test NDCG@20 (tau) | s/epoch |", "|---|---|---|---|---|---|---|---|"]

    def cell(r, tau=None, timed=None):
        if r is None:
            return "not run", ""
        if "error" in r:
            return "failed", ""
        flag = "*" if r.get("time_limited") else ""
        t = f" ({tau:g})" if tau is not None else ""
        # idle-machine re-measurement (--timing) when there is one; else the run's own mean (marked ~)
        sec = f"{timed:.2f}" if isinstance(timed, float) else f"~{r['sec_per_epoch']:.1f}"
        return f"{r['test_ndcg']:.4f}{t}{flag}", sec

    for model in ADAPTERS.names():
        row = results.get(model, {})
        timing = row.get("timing", {})
        b = cell(row.get("built-in"), timed=timing.get("built-in"))
        tau_sl, sl = _best(row, "SL")
        tau_bsl, bsl = _best(row, "BSL")
        s, bs = cell(sl, tau_sl, timing.get("SL")), cell(bsl, tau_bsl, timing.get("BSL"))
        if sl is None and any(k.startswith("SL ") for k in row):
            s = ("failed", "")
        if bsl is None and any(k.startswith("BSL ") for k in row):
            bs = ("failed", "")
        lines.append(f"| {model} | {kind_of(model)} | {b[0]} | {b[1]} | {s[0]} | {s[1]} | {bs[0]} | {bs[1]} |")
    meta = results.get("_meta", {})
    errors = [f"- {m} {k}: {v['error']}" for m, row in results.items() if not m.startswith("_")
              for k, v in row.items() if k != "timing" and "error" in v]
    bounded = "cosine, the pair scorers' tanh" if meta.get("pair_score_fn") == "tanh" else "cosine"
    note = (f"\nOne seed (2020); at most {meta.get('epochs')} epochs (early stop after "
            f"{TRAIN['stopping_step']} evaluations without gain), {meta.get('neg_num')} negatives for SL/BSL "
            f"({meta.get('pair_neg_num')} for the pair scorers); "
            f"tau grids: scores in [-1, 1] ({bounded}) {meta.get('cos_taus')}, raw logits {meta.get('logit_taus')}; "
            f"* = stopped by the {meta.get('time_limit')} s time limit (its best checkpoint so far is tested). "
            "s/epoch: one training epoch after a warm-up epoch, measured with `--timing` on an idle machine "
            "(evaluation excluded); ~ marks a run's own mean epoch time, taken while other processes shared "
            "the cores.\n")
    return "\n".join(lines) + "\n" + note + ("\nFailed runs:\n" + "\n".join(errors) + "\n" if errors else "")


if __name__ == "__main__":
    main()
