"""The papers' Gowalla rows: RecBole's BPR, SL, BSL (official form), PSL x3 and DSL, each tuned on
validation NDCG@20 over a small grid under one budget, the chosen point rerun with two more seeds
(MF), and the same rows on LightGCN at MF's chosen points (``--model lightgcn``).

Data: ../shared/data/gowalla (LightGCN's split; train / valid; the valid file also stands in for
RecBole's test split, whose numbers are never reported). Every run is one `run_recbole_dsl.py`
process (1 torch thread, `--parallel` at a time) started from the shipped configuration of its row,
examples/papers/gowalla-<model>-<row>.yaml, with the grid point as command-line overrides; results
are appended to benchmarks/results/papers_gowalla.jsonl (LightGCN: papers_gowalla_lightgcn.jsonl) as
they arrive and finished (row, point, seed) triples are skipped, so an interrupted run resumes
where it stopped.

MF stages, each needing the one before:
  A  lr in {1e-3, 1e-2, 1e-1} for RecBole's BPR and for SL at tau 0.1 (the lr of every softmax row)
  B  SL tau {0.05, 0.2}; PSL (tanh, atan, relu) tau {0.025, 0.05, 0.1} (halved convention); DSL (both branches, gamma 0.5) tau {0.05, 0.1, 0.2}
  C  BSL official per row, t1 = SL's best tau, t2 {1.1, 1.2, 1.3}; DSL reweighting only at its best tau
  L  lr in {1e-2, 1e-1} for BSL, PSL x3 and DSL at their best point (A gave SL's lr to every row; this
     gives each row the lr grid SL and BPR had)
  D  each row's best point (seed 2020) with seeds 2021 and 2022
  E  beside the table, outside the tuning budget: DSL at its chosen tau with the temperature branch
     on and the lse or margin intensity, or the temperature map reversed (dsl_gamma -0.5)
  F  beside the table too: DSL's chosen point with the reweighting folded at a false-negative
     threshold (dsl_fn_threshold 0.5), and DSL with the temperature branch on and its slate the
     catalogue's 100 highest-scoring non-positive items (dsl_slate_source catalogue)

LightGCN stages (an epoch costs 10-20 times MF's on 2 cores, so its grid is one step either side):
  T  every row at MF's chosen point, seed 2020 (BPR: the plugin's BPR loss with one uniform
     negative, the positives rejected, as RecBole's LightGCN trains, through the plugin's faster
     propagation)
  G  each softmax row's own dimension one grid step either side of MF's point, seed 2020, in the
     order SL, BSL, DSL, PSL tanh (SL tau and DSL tau {0.05, 0.2}, BSL t2 {1.1, 1.3}, PSL tau
     {0.025, 0.1}), then one step further where a row's best lies at an edge; lr stays MF's 1e-3
  D  as for MF (each row's best point over T and G)

    python benchmarks/bench_papers_gowalla.py              # run what is missing, then print the table
    python benchmarks/bench_papers_gowalla.py --model lightgcn --stages T
    python benchmarks/bench_papers_gowalla.py --model lightgcn --stages G --rows sl,bsl   # some rows' grids
    python benchmarks/bench_papers_gowalla.py --model lightgcn --stages D --rows sl,bsl   # some rows' seeds
    python benchmarks/bench_papers_gowalla.py --report     # the table only
    python benchmarks/bench_papers_gowalla.py --write-configs   # the chosen points into examples/papers/
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_result, cli_run, header, versus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "papers_gowalla.jsonl"
CONFIGS = ROOT / "examples" / "papers"
TUNE_SEED, SEEDS = 2020, (2021, 2022)

# The budget every row shares (RecBole keys); the configs carry it, so a user's one-command run
# is the benchmark's run.
COMMON = {
    "model": "BPR", "dataset": "gowalla", "data_path": "../shared/data",
    "benchmark_filename": ["train", "valid", "valid"], "load_col": {"inter": ["user_id", "item_id"]},
    "embedding_size": 64, "train_batch_size": 2048, "epochs": 15, "eval_step": 3, "stopping_step": 2,
    "metrics": ["Recall", "NDCG"], "topk": [20], "valid_metric": "NDCG@20", "show_progress": False,
}
# Softmax rows: 1,000 negatives shared by the batch (one [B, N] product), lazy Adam on the touched rows.
SOFTMAX = {"neg_sampler": "shared", "neg_num": 1000, "sparse_update": True}

ROWS = {  # row -> (title, keys fixed for the row)
    "bpr": ("RecBole BPR (its loss and sampler, 1 negative)", {"rec_loss": None}),
    "sl": ("SL", {"rec_loss": "SL", **SOFTMAX}),
    "bsl": ("BSL, official form per row", {"rec_loss": "BSL", "bsl_form": "official", **SOFTMAX}),
    "psl-tanh": ("PSL tanh", {"rec_loss": "PSL", "psl_activation": "tanh", **SOFTMAX}),
    "psl-atan": ("PSL atan", {"rec_loss": "PSL", "psl_activation": "atan", **SOFTMAX}),
    "psl-relu": ("PSL relu", {"rec_loss": "PSL", "psl_activation": "relu", **SOFTMAX}),
    "dsl": ("DSL", {"rec_loss": "DSL", **SOFTMAX}),
}
LRS = (1e-3, 1e-2, 1e-1)
# Full DSL (both branches) is the ml-100k search's point, gamma 0.5, named explicitly: DSL's shipped
# default turned its temperature branch off (gamma 0) after these grids ran.
FULL_DSL = {"dsl_gamma": 0.5}
# Points with these keys (or another gamma) are stages E and F's variants, outside every row's tuning budget.
VARIANT_KEYS = {"dsl_intensity", "dsl_fn_threshold", "dsl_slate_source"}
DSL_VARIANTS = ({"dsl_intensity": "lse"}, {"dsl_intensity": "margin"}, {"dsl_gamma": -0.5})
DSL_READINGS = ({"dsl_fn_threshold": 0.5},
                {"dsl_slate_source": "catalogue", "dsl_slate_size": 100, "dsl_temperature": True, **FULL_DSL})

# LightGCN (RecBole's defaults: 2 layers, reg_weight 1e-5): the MF budget and rows, without
# sparse_update (the propagation touches every row of the tables); its BPR row is the plugin's BPR
# loss on one uniform negative, so it gets the plugin's CSR propagation too.
LIGHTGCN_ROWS = {row: (title, {k: v for k, v in keys.items() if k != "sparse_update"})
                 for row, (title, keys) in ROWS.items()}
LIGHTGCN_ROWS["bpr"] = ("BPR (one uniform negative, as RecBole's LightGCN)",
                        {"rec_loss": "BPR", "neg_sampler": "uniform", "neg_num": 1})


@dataclass(frozen=True)
class Suite:
    name: str  # the configs' infix: examples/papers/gowalla-<name>-<row>.yaml
    model: str  # RecBole's model name
    rows: dict
    results: Path
    stages: str  # the stages run by default
    budget: tuple = ()  # (key, value) pairs over COMMON


MF = Suite("mf", "BPR", ROWS, RESULTS, "ABCLDEF")
# 9 epochs (3 evaluations) instead of 15: a LightGCN epoch is ~80-110 s on 2 cores.
LIGHTGCN = Suite("lightgcn", "LightGCN", LIGHTGCN_ROWS, ROOT / "benchmarks" / "results" / "papers_gowalla_lightgcn.jsonl",
                 "TGD", (("epochs", 9),))
# Stage G: (row, key, values around MF's point, (one step below them, one step above)), in the
# order they run. Once a row's values have run, a best at an edge adds that edge's next step.
LIGHTGCN_GRID = (("sl", "loss_tau", (0.05, 0.2), (0.025, 0.3)), ("bsl", "bsl_t2", (1.1, 1.3), (1.0, 1.4)),
                 ("dsl", "loss_tau", (0.05, 0.2), (0.025, 0.3)), ("psl-tanh", "loss_tau", (0.025, 0.1), (0.0125, 0.15)))
# Stage T's order: the rows the papers' claims are about first, PSL's other two activations last
# (on MF they stayed within 0.0002 of tanh).
LAST = ("psl-atan", "psl-relu")
SUITES = {s.name: s for s in (MF, LIGHTGCN)}


def _key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def load(suite: Suite = MF) -> list:
    if not suite.results.exists():
        return []
    return [r for r in map(json.loads, filter(str.strip, suite.results.read_text().splitlines())) if "error" not in r]


def is_variant(point) -> bool:
    return bool(VARIANT_KEYS & set(point)) or point.get("dsl_gamma", FULL_DSL["dsl_gamma"]) != FULL_DSL["dsl_gamma"]


def best_point(recs, row):
    """The row's tuned point: highest validation NDCG@20 at the tuning seed (ties: the earlier run)."""
    tuned = [r for r in recs if r["row"] == row and r["seed"] == TUNE_SEED and not is_variant(r["point"])]
    return max(tuned, key=lambda r: r["best_valid"]["ndcg@20"])["point"] if tuned else None


def stage_jobs(stage, recs, suite: Suite = MF, mf_recs=None):
    """(row, point, seed) to run in a stage, given what has finished (mf_recs: MF's, for stage T)."""
    if stage == "T":
        rows = sorted(suite.rows, key=lambda r: r in LAST)
        return [(row, best_point(mf_recs, row), TUNE_SEED) for row in rows if best_point(mf_recs, row)]
    if stage == "G":
        jobs = []
        for row, key, values, (below, above) in LIGHTGCN_GRID:
            mf = best_point(mf_recs, row)
            if not mf:
                continue
            points = [{**mf, key: v} for v in values]
            jobs += [(row, p, TUNE_SEED) for p in points]
            ran = {_key(r["point"]) for r in recs if r["row"] == row and r["seed"] == TUNE_SEED}
            if {_key(p) for p in points + [mf]} <= ran:
                best = best_point(recs, row)[key]
                edge = below if best == min(values + (mf[key],)) else above if best == max(values + (mf[key],)) else None
                if edge is not None:
                    jobs.append((row, {**mf, key: edge}, TUNE_SEED))
        return jobs
    if stage == "D":
        return [(row, best_point(recs, row), s) for row in suite.rows if best_point(recs, row) for s in SEEDS]
    if stage == "A":
        return ([("bpr", {"learning_rate": lr}, TUNE_SEED) for lr in LRS]
                + [("sl", {"learning_rate": lr, "loss_tau": 0.1}, TUNE_SEED) for lr in LRS])
    lr = best_point(recs, "sl")["learning_rate"] if best_point(recs, "sl") else None
    if stage == "B":
        jobs = [("sl", {"learning_rate": lr, "loss_tau": t}, TUNE_SEED) for t in (0.05, 0.2)]
        for act in ("tanh", "atan", "relu"):
            jobs += [(f"psl-{act}", {"learning_rate": lr, "loss_tau": t}, TUNE_SEED) for t in (0.025, 0.05, 0.1)]
        return jobs + [("dsl", {"learning_rate": lr, "loss_tau": t, **FULL_DSL}, TUNE_SEED) for t in (0.05, 0.1, 0.2)]
    if stage == "C":
        sl_tau = best_point(recs, "sl")["loss_tau"]
        dsl_tau = best_point(recs, "dsl")["loss_tau"]
        return ([("bsl", {"learning_rate": lr, "bsl_t1": sl_tau, "bsl_t2": t2}, TUNE_SEED) for t2 in (1.1, 1.2, 1.3)]
                + [("dsl", {"learning_rate": lr, "loss_tau": dsl_tau, "dsl_temperature": False}, TUNE_SEED)])
    if stage == "L":
        rows = [r for r in suite.rows if r not in ("bpr", "sl")]
        return [(row, {**best_point(recs, row), "learning_rate": other}, TUNE_SEED)
                for row in rows if best_point(recs, row) for other in LRS if other != lr]
    if stage == "F":
        best = best_point(recs, "dsl")
        return [("dsl", {**best, **v}, TUNE_SEED) for v in DSL_READINGS]
    # E: DSL's other readings of its temperature branch at its chosen tau (never tuned points:
    # reported beside the table, one seed).
    dsl = {k: v for k, v in best_point(recs, "dsl").items() if k != "dsl_temperature"}
    return [("dsl", {**dsl, **FULL_DSL, **v}, TUNE_SEED) for v in DSL_VARIANTS]



def run(job, args, meta, suite: Suite = MF):
    row, point, seed = job
    out = Path(args.out) / f"{row}-{abs(hash(_key(point))) % 10**8}-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    keys = {"data_path": str(ROOT.parent / "shared" / "data"), "seed": seed, "checkpoint_dir": str(out / "saved"),
            "gpu_id": "", "state": "INFO", **point}
    out_ = cli_run(CONFIGS / f"gowalla-{suite.name}-{row}.yaml", keys, out)
    res = {"row": row, "point": point, "seed": seed, "wall_s": out_.pop("wall_s")}
    if "error" in out_:
        res["error"] = out_["error"]
    else:
        res.update(best_valid=out_.pop("valid"), **out_, meta=meta)
    append_result(suite.results, res)
    return res


def write_configs(recs=None, suite: Suite = MF):
    """One YAML per row: the shared budget, the row's keys and, once tuned, its chosen point
    (LightGCN: MF's chosen point, which its rows run at)."""
    CONFIGS.mkdir(parents=True, exist_ok=True)
    recs = load(suite) if recs is None else recs
    mf_recs = load(MF) if suite is LIGHTGCN else recs
    title_model = "MF" if suite is MF else suite.model
    for row, (title, fixed) in suite.rows.items():
        point = best_point(recs, row) or best_point(mf_recs, row)
        own_grid = suite is LIGHTGCN and any(r["row"] == row and r["point"] != best_point(mf_recs, row) for r in recs)
        lines = [f"# Gowalla, {title_model}: {title}. Run from the repository root:",
                 f"#   python run_recbole_dsl.py --config_files examples/papers/gowalla-{suite.name}-{row}.yaml",
                 "# Written by benchmarks/bench_papers_gowalla.py --write-configs (BENCHMARKS.md, \"The papers' rows",
                 "# on Gowalla\"): the budget shared by every row, then this row's point chosen on validation NDCG@20."]
        if suite is LIGHTGCN:
            lines.append("# Chosen among MF's point and one grid step either side of it on LightGCN (stage G)."
                         if own_grid else "# The point is MF's (stage T): this LightGCN row is not tuned.")
        if point is None:
            lines.append("# Not tuned yet: the row's defaults.")
        else:
            seeds = [r["best_valid"]["ndcg@20"] for r in recs if r["row"] == row and r["point"] == point]
            if seeds:
                lines.append(f"# Validation NDCG@20 at this point: {', '.join(f'{v:.4f}' for v in seeds)} "
                             f"({len(seeds)} seed{'s' * (len(seeds) > 1)}).")
        body = {**COMMON, "model": suite.model, **dict(suite.budget), **fixed, **(point or {})}
        lines += [f"{k}: {_yaml(v)}" for k, v in body.items()]
        (CONFIGS / f"gowalla-{suite.name}-{row}.yaml").write_text("\n".join(lines) + "\n")


def _yaml(v) -> str:
    if v is None:
        return "~"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def report(recs, suite: Suite = MF) -> str:
    point_title = "chosen point (seed 2020)" if suite is MF else "point (best at seed 2020 of MF's and stage G's)"
    lines = [f"| row | {point_title} | valid NDCG@20 by seed (2020, 2021, 2022) | mean | vs BPR | vs SL | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    means = {}
    for row, (title, _) in suite.rows.items():
        point = best_point(recs, row)
        if point is None:
            continue
        runs = [r for r in recs if r["row"] == row and r["point"] == point]
        vals = [r["best_valid"]["ndcg@20"] for r in sorted(runs, key=lambda r: r["seed"])]
        means[row] = vals
        ep = [e for r in runs for e in r.get("epoch_s", [])]
        cells = [title, ", ".join(f"{k} {v}" for k, v in point.items()), ", ".join(f"{v:.4f}" for v in vals),
                 f"{statistics.mean(vals):.4f}", "", "", f"{statistics.median(ep):.1f}" if ep else ""]
        lines.append(cells)
    for cells in lines[2:]:
        row = next(r for r, (t, _) in suite.rows.items() if t == cells[0])
        if "bpr" in means and row != "bpr":
            cells[4] = f"{statistics.mean(means[row]) / statistics.mean(means['bpr']) - 1:+.1%}"
        if "sl" in means and row != "sl":
            cells[5] = versus(means[row], means["sl"])
    out = lines[:2] + ["| " + " | ".join(c) + " |" for c in lines[2:]]
    out += ["", "Every point run at seed 2020 (stages E and F's DSL variants included):", "", "| row | point | valid NDCG@20 | Recall@20 | evaluations |",
            "|---|---|---|---|---|"]
    for r in recs:
        if r["seed"] == TUNE_SEED:
            out.append(f"| {r['row']} | {', '.join(f'{k} {v}' for k, v in r['point'].items())} | "
                       f"{r['best_valid']['ndcg@20']:.4f} | {r['best_valid']['recall@20']:.4f} | "
                       f"{' '.join(f'{v:.4f}' for v in r['valid_ndcg_per_eval'])} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report", action="store_true")
    p.add_argument("--write-configs", action="store_true")
    p.add_argument("--model", choices=sorted(SUITES), default="mf")
    p.add_argument("--stages", default=None, help="default: ABCLDEF (mf), TGD (lightgcn)")
    p.add_argument("--rows", default=None,
                   help="comma-separated rows to run, in this order (default: every row); the report shows all")
    p.add_argument("--out", default="/tmp/recbole_dsl_bench_papers_gowalla")
    args = p.parse_args(argv)
    suite = SUITES[args.model]
    rows = args.rows.split(",") if args.rows else None
    if rows and set(rows) - set(suite.rows):
        p.error(f"--rows: unknown {sorted(set(rows) - set(suite.rows))}; known: {', '.join(suite.rows)}")
    if args.write_configs:
        write_configs(suite=suite)
        return
    if not args.report:
        if not all((CONFIGS / f"gowalla-{suite.name}-{row}.yaml").exists() for row in suite.rows):
            write_configs([] if suite is MF else None, suite=suite)
        meta = header("python benchmarks/bench_papers_gowalla.py " + " ".join(argv or sys.argv[1:]))

        def pending(stage):
            recs = load(suite)
            done = {(r["row"], _key(r["point"]), r["seed"]) for r in recs}
            todo = [j for j in stage_jobs(stage, recs, suite, load(MF)) if (j[0], _key(j[1]), j[2]) not in done]
            return sorted((j for j in todo if j[0] in rows), key=lambda j: rows.index(j[0])) if rows else todo

        for stage in args.stages or suite.stages:
            # G twice: its edges' next steps are known once the grid's results are in
            for label in [stage] + (["G, the edges' next steps"] if stage == "G" else []):
                todo = pending(stage)
                print(f"stage {label}: {len(todo)} runs", flush=True)
                with ThreadPoolExecutor(args.parallel) as pool:
                    list(pool.map(lambda j: run(j, args, meta, suite), todo))
    print(report(load(suite), suite))


if __name__ == "__main__":
    main()
