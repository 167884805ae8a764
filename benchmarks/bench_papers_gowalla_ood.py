"""The papers' popularity-shift protocol on Gowalla (MF): SL, PSL tanh, BSL (official form) and DSL
tuned on an OOD split's validation, reported on its popularity-shifted test part.

The split is this plugin's PSL protocol (recbole_dsl.protocols.ood_split, seed 2024) drawn from
../shared/data/gowalla/gowalla.train.inter alone: 20% of those interactions moved to an OOD test part
(item first, uniformly, then one of its interactions), 10% of the rest to an in-distribution
validation part. Gowalla's own validation file and its unpublished test set take no part; the test
numbers here are this split's OOD part, not Gowalla's test.

Every run is one `run_recbole_dsl.py` process started from the row's shipped configuration
(examples/papers/gowalla-mf-<row>.yaml: the same budget as bench_papers_gowalla.py), pointed at the
split. lr is the standard split's choice (1e-3 for every row). Grids, chosen on validation NDCG@20
(seed 2020): SL tau {0.05, 0.1, 0.2}; PSL tanh tau {0.025, 0.05, 0.1}; DSL reweighting only and
full DSL at tau 0.1 (stage B); then BSL official per row, t1 = SL's best tau, t2 {1.1, 1.2}
(stage C); then each row's chosen point, and full DSL's, with seeds 2021 and 2022 (stage D; the
split stays the same: only training's seed changes). Results are appended to
benchmarks/results/papers_gowalla_ood.jsonl as they arrive; finished (row, point, seed) triples are
skipped, so an interrupted run resumes.

    python benchmarks/bench_papers_gowalla_ood.py            # run what is missing, print the table
    python benchmarks/bench_papers_gowalla_ood.py --report
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_result, cli_run, header, versus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "papers_gowalla_ood.jsonl"
CONFIGS = ROOT / "examples" / "papers"
SOURCE = ROOT.parent / "shared" / "data" / "gowalla" / "gowalla.train.inter"
SPLIT_SEED, SEED, LR = 2024, 2020, 1e-3
SEEDS = (2021, 2022)  # stage D
FULL_DSL = {"learning_rate": LR, "loss_tau": 0.1, "dsl_temperature": True, "dsl_gamma": 0.5}
NAME = f"gowalla_train-ood-{SPLIT_SEED}"
TITLES = {"bpr": "RecBole BPR", "sl": "SL", "psl-tanh": "PSL tanh", "bsl": "BSL, official form per row",
          "dsl": "DSL"}


def load() -> list:
    if not RESULTS.exists():
        return []
    return [r for r in map(json.loads, filter(str.strip, RESULTS.read_text().splitlines())) if "error" not in r]


def best(recs, row):
    """The row's run chosen on validation NDCG@20 at the tuning seed."""
    runs = [r for r in recs if r["row"] == row and r["seed"] == SEED]
    return max(runs, key=lambda r: r["valid"]["ndcg@20"]) if runs else None


def seeds_of(recs, row, point):
    return sorted((r for r in recs if r["row"] == row and r["point"] == point), key=lambda r: r["seed"])


def jobs(stage, recs, seeds=SEEDS):
    if stage == "B":
        return ([("bpr", {"learning_rate": LR}, SEED)]
                + [("sl", {"learning_rate": LR, "loss_tau": t}, SEED) for t in (0.05, 0.1, 0.2)]
                + [("psl-tanh", {"learning_rate": LR, "loss_tau": t}, SEED) for t in (0.025, 0.05, 0.1)]
                + [("dsl", {"learning_rate": LR, "loss_tau": 0.1, "dsl_temperature": False}, SEED),
                   # both branches at the ml-100k search's gamma (DSL's default has it off since)
                   ("dsl", FULL_DSL, SEED)])
    if stage == "D":
        points = [(row, best(recs, row)["point"]) for row in TITLES if best(recs, row)] + [("dsl", FULL_DSL)]
        return [(row, point, s) for row, point in points for s in seeds]
    sl = best(recs, "sl")
    return [("bsl", {"learning_rate": LR, "bsl_t1": sl["point"]["loss_tau"], "bsl_t2": t2}, SEED) for t2 in (1.1, 1.2)]


def prepare(out: Path) -> Path:
    """The split's data_path (written once; the same file and seed give the same split anywhere)."""
    data = out / "data"
    if not (data / NAME / f"{NAME}.split.json").exists():
        from recbole_dsl.protocols.ood_split import write_ood_split

        src = out / "src" / "gowalla_train"
        src.mkdir(parents=True, exist_ok=True)
        link = src / "gowalla_train.inter"
        if not link.exists():
            link.symlink_to(SOURCE)
        write_ood_split("gowalla_train", str(data), seed=SPLIT_SEED, data_path=str(out / "src"), overwrite=True)
    return data


def run(job, data: Path, out: Path, meta):
    row, point, seed = job
    folder = out / "runs" / f"{row}-{abs(hash(json.dumps(point, sort_keys=True))) % 10**8}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    keys = {"data_path": str(data), "dataset": NAME, "benchmark_filename": ["train", "valid", "test"],
            "seed": seed, "checkpoint_dir": str(folder / "saved"), "gpu_id": "", "state": "INFO", **point}
    res = {"row": row, "point": point, "seed": seed,
           **cli_run(CONFIGS / f"gowalla-mf-{row}.yaml", keys, folder, splits=("valid", "test"))}
    if "error" not in res:
        res["meta"] = meta
    append_result(RESULTS, res)
    return res


def report(recs) -> str:
    lines = ["| row | chosen on validation | valid NDCG@20 (in distribution) | test Recall@20 (OOD) | "
             "test NDCG@20 (OOD) | test NDCG vs SL |", "|---|---|---|---|---|---|"]
    sl = best(recs, "sl")
    for row, title in TITLES.items():
        b = best(recs, row)
        if b is None:
            continue
        vs = "" if sl is None or row == "sl" else f"{b['test']['ndcg@20'] / sl['test']['ndcg@20'] - 1:+.1%}"
        point = ", ".join(f"{k} {v}" for k, v in b["point"].items() if k != "learning_rate")
        lines.append(f"| {title} | {point or 'lr 1e-3'} | {b['valid']['ndcg@20']:.4f} | {b['test']['recall@20']:.4f} | "
                     f"{b['test']['ndcg@20']:.4f} | {vs} |")
    lines += ["", seed_table(recs)]
    lines += ["", "Every run:", "", "| row | point | seed | valid NDCG@20 | test NDCG@20 (OOD) |", "|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['row']} | {', '.join(f'{k} {v}' for k, v in r['point'].items())} | {r['seed']} | "
                     f"{r['valid']['ndcg@20']:.4f} | {r['test']['ndcg@20']:.4f} |")
    return "\n".join(lines)


def seed_table(recs) -> str:
    """Each row's chosen point (and full DSL's) over the seeds run: valid and OOD test NDCG@20."""
    points = [(TITLES[row], row, best(recs, row)["point"]) for row in TITLES if best(recs, row)]
    if seeds_of(recs, "dsl", FULL_DSL) and best(recs, "dsl") and best(recs, "dsl")["point"] != FULL_DSL:
        points.append(("DSL, both branches (gamma 0.5; not chosen on validation)", "dsl", FULL_DSL))
    sl = seeds_of(recs, "sl", best(recs, "sl")["point"]) if best(recs, "sl") else []
    lines = ["| row | seeds | valid NDCG@20 by seed | test NDCG@20 (OOD) by seed | test mean | test vs SL |",
             "|---|---|---|---|---|---|"]
    for title, row, point in points:
        runs = seeds_of(recs, row, point)
        valid = [r["valid"]["ndcg@20"] for r in runs]
        test = [r["test"]["ndcg@20"] for r in runs]
        is_sl = row == "sl" and point == best(recs, "sl")["point"]
        vs = "" if is_sl or not sl else versus(test, [r["test"]["ndcg@20"] for r in sl])
        lines.append(f"| {title} | {', '.join(str(r['seed']) for r in runs)} | {', '.join(f'{v:.4f}' for v in valid)} | "
                     f"{', '.join(f'{v:.4f}' for v in test)} | {statistics.mean(test):.4f} | {vs} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report", action="store_true")
    p.add_argument("--stages", default="BCD")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="stage D's seeds (comma-separated), e.g. one per process to run them side by side")
    p.add_argument("--out", default="/tmp/recbole_dsl_bench_papers_gowalla_ood")
    args = p.parse_args(argv)
    if not args.report:
        out = Path(args.out)
        data = prepare(out)
        split = json.loads((data / NAME / f"{NAME}.split.json").read_text())
        split.pop("yaml", None)
        meta = {"header": header("python benchmarks/bench_papers_gowalla_ood.py " + " ".join(argv or sys.argv[1:])),
                "split": split}
        for stage in args.stages:
            recs = load()
            done = {(r["row"], json.dumps(r["point"], sort_keys=True), r["seed"]) for r in recs}
            todo = [j for j in jobs(stage, recs, tuple(map(int, args.seeds.split(","))))
                    if (j[0], json.dumps(j[1], sort_keys=True), j[2]) not in done]
            print(f"stage {stage}: {len(todo)} runs", flush=True)
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda j: run(j, data, out, meta), todo))
    print(report(load()))


if __name__ == "__main__":
    main()
