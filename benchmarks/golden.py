"""Bit-identity of training: fixed-seed, one-thread 2-epoch runs whose losses and metrics must not
change when the code is restructured.

    python benchmarks/golden.py --write benchmarks/golden.json   # record (on the reference commit)
    python benchmarks/golden.py --check benchmarks/golden.json   # compare this checkout, exit 1 on a change
    python benchmarks/golden.py --check benchmarks/golden.json --only BPR-SL,NeuMF-SL
    python benchmarks/golden.py --check benchmarks/golden.json --tolerance 0.01  # relative, for changes
        # that are meant to move only float rounding (a faster kernel): prints each run's largest change

Each run: ml-100k, seed 2020, torch.set_num_threads(1), 2 training epochs, then full-sort
Recall/NDCG@20 on valid and test. Every epoch loss (each part of a tuple loss) and every metric is
stored as float.hex, so "equal" means bit for bit. The runs cover MF and LightGCN with SL, BSL,
PSL, DSL and BPR, MultiVAE and NeuMF with SL, and the score paths and samplers that a change of
the score path could touch (full / gather, shared and in_batch negatives, user-grouped BSL).
tests/test_golden.py runs the check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BASE = {
    "epochs": 2,
    "neg_num": 32,
    "train_batch_size": 2048,
    "eval_batch_size": 409600,
    "embedding_size": 32,
    "learning_rate": 0.005,
    "show_progress": False,
    "state": "ERROR",
    "metrics": ["Recall", "NDCG"],
    "topk": [20],
    "valid_metric": "NDCG@20",
    "gpu_id": "",
    "seed": 2020,
    "reproducibility": True,
}

PAPER_BSL = {"bsl_form": "paper", "bsl_group_positives": True, "loss_tau": 0.1, "loss_tau_pos": 0.1}
# DSL pinned to both branches (the defaults these runs were recorded with, gamma 0.5), so they keep
# covering the temperature branch whatever the shipped default is
BOTH = {"dsl_gamma": 0.5}

# name -> (model, extra keys)
RUNS = {
    # BSL pinned to the form these runs were recorded with (the paper's equation, pooled positives),
    # whatever the shipped defaults are
    **{f"{m}-{loss}": (m, {"rec_loss": loss, **(PAPER_BSL if loss == "BSL" else BOTH if loss == "DSL" else {})})
       for m in ("BPR", "LightGCN") for loss in ("SL", "BSL", "PSL", "DSL", "BPR")},
    "MultiVAE-SL": ("MultiVAE", {"rec_loss": "SL"}),
    "NeuMF-SL": ("NeuMF", {"rec_loss": "SL", "neg_num": 8}),
    # score paths and samplers
    "BPR-SL-gather": ("BPR", {"rec_loss": "SL", "score_path": "gather"}),
    "BPR-DSL-gather": ("BPR", {"rec_loss": "DSL", "score_path": "gather", "dsl_slate_size": 8, **BOTH}),
    "BPR-SL-shared": ("BPR", {"rec_loss": "SL", "neg_sampler": "shared", "neg_num": 256}),
    "BPR-DSL-in_batch": ("BPR", {"rec_loss": "DSL", "neg_sampler": "in_batch", **BOTH}),
    "BPR-SL-popularity-logq": ("BPR", {"rec_loss": "SL", "neg_sampler": "popularity", "sl_log_q_correction": True}),
    "BPR-BSL-user": ("BPR", {**PAPER_BSL, "rec_loss": "BSL", "train_batch_mode": "user", "loss_tau_pos": 0.2}),
    "MultiVAE-DSL": ("MultiVAE", {"rec_loss": "DSL", **BOTH}),
}


def _hex(x):
    if isinstance(x, (tuple, list)):
        return [_hex(v) for v in x]
    return float(x).hex()


def one_run(name: str) -> dict:
    import torch
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_dsl import Config, get_model, get_trainer
    from recbole_dsl.protocols import data_preparation

    torch.set_num_threads(1)
    model, extra = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(model, "ml-100k", config_dict={**BASE, **extra, "checkpoint_dir": tmp}, cmd_args=[])
        init_seed(cfg["seed"], cfg["reproducibility"])
        train, valid, test = data_preparation(cfg, create_dataset(cfg))
        init_seed(cfg["seed"], cfg["reproducibility"])
        net = get_model(model)(cfg, train._dataset).to(cfg["device"])
        trainer = get_trainer(cfg["MODEL_TYPE"], model)(cfg, net)
        if cfg["train_batch_mode"] == "user":
            from recbole_dsl.data import UserGroupedTrainDataLoader

            train = UserGroupedTrainDataLoader.wrap(train, cfg["positives_per_user"])
        losses = [_hex(trainer._train_epoch(train, ep)) for ep in range(cfg["epochs"])]
        res = {"losses": losses}
        for split, data in (("valid", valid), ("test", test)):
            res[split] = {k: _hex(v) for k, v in trainer.evaluate(data, load_best_model=False).items()}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE")
    g.add_argument("--check", metavar="FILE")
    g.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="comma-separated run names")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="with --check: pass when every loss and metric is within this relative change")
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(one_run(args.child)))
        return 0
    import subprocess

    names = args.only.split(",") if args.only else list(RUNS)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results = {}
    for name in names:
        # one process per run: process-wide settings (flush-to-zero, allocator) and RNG state of
        # one run cannot leak into the next
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                             env=env, cwd=tempfile.gettempdir())
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            return 2
        results[name] = json.loads(line[len("RESULT "):])
        print(name, json.dumps(results[name]), flush=True)
    if args.write:
        Path(args.write).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        return 0
    ref = json.loads(Path(args.check).read_text())
    bad = [n for n in names if ref.get(n) != results[n]]
    for n in bad:
        print(f"CHANGED {n}:\n  before {ref.get(n)}\n  after  {results[n]}", file=sys.stderr)
    print(f"{len(names) - len(bad)} of {len(names)} runs bit-identical")
    if args.tolerance is None:
        return 1 if bad else 0
    worst = {n: _largest_change(ref[n], results[n]) for n in names if n in ref}
    for n, (rel, where) in worst.items():
        print(f"{n}: largest relative change {rel:.2e} ({where})")
    over = [n for n, (rel, _) in worst.items() if rel > args.tolerance]
    print(f"{len(names) - len(over)} of {len(names)} runs within {args.tolerance:g}")
    return 1 if over else 0


def _values(res: dict):
    """(label, float) of every epoch loss (each part) and metric of a run's record."""
    for ep, loss in enumerate(res["losses"]):
        for i, x in enumerate(loss if isinstance(loss, list) else [loss]):
            yield f"epoch {ep} loss {i}", float.fromhex(x)
    for split in ("valid", "test"):
        for k, x in sorted(res[split].items()):
            yield f"{split} {k}", float.fromhex(x)


def _largest_change(a: dict, b: dict):
    pairs = zip(_values(a), _values(b))
    return max(((abs(x - y) / max(abs(x), 1e-12), la) for (la, x), (_, y) in pairs), default=(0.0, ""))


if __name__ == "__main__":
    sys.exit(main())
