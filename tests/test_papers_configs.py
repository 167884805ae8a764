"""The shipped per-row configs of the papers' Gowalla table (examples/papers/) run as written, on
small data, and select on validation data only."""
import math
import sys

import pytest
import yaml

from recbole_dsl.quick_start import run_recbole_dsl

from helpers import FAST, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_papers_gowalla as bench  # noqa: E402

CONFIGS = sorted((ROOT / "examples" / "papers").glob("gowalla-*.yaml"))


def test_one_config_per_row_of_the_benchmark():
    assert {p.name for p in CONFIGS} == {f"gowalla-{s.name}-{row}.yaml" for s in bench.SUITES.values() for row in s.rows}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_reads_gowalla_s_train_and_valid_files_only(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["dataset"] == "gowalla" and cfg["data_path"] == "../shared/data"
    assert cfg["benchmark_filename"] == ["train", "valid", "valid"]  # the published test set stays aside
    assert cfg["valid_metric"] == "NDCG@20"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_and_evaluates(path, slice_root, tmp_path):
    # The row's own loss, sampler and optimiser settings; only the data and the size are swapped.
    small = {**FAST, "dataset": "ml-slice", "data_path": str(slice_root), "benchmark_filename": None,
             "checkpoint_dir": str(tmp_path), "neg_num": 64}
    res = run_recbole_dsl(config_file_list=[str(path)], config_dict=small, saved=False)
    ndcg = res["best_valid_result"]["ndcg@20"]
    assert math.isfinite(ndcg) and 0 < ndcg <= 1


def test_stages_follow_the_chosen_points():
    def rec(row, point, ndcg, seed=bench.TUNE_SEED):
        return {"row": row, "point": point, "seed": seed, "best_valid": {"ndcg@20": ndcg}}

    recs = [rec("sl", {"learning_rate": lr, "loss_tau": 0.1}, v) for lr, v in zip(bench.LRS, (0.10, 0.12, 0.05))]
    assert {p["learning_rate"] for r, p, _ in bench.stage_jobs("B", recs)} == {1e-2}
    recs += [rec("sl", {"learning_rate": 1e-2, "loss_tau": 0.2}, 0.13), rec("dsl", {"loss_tau": 0.05}, 0.1),
             rec("sl", {"learning_rate": 1e-2, "loss_tau": 0.05}, 0.99, seed=2021)]  # other seeds never choose
    bsl = [p for r, p, _ in bench.stage_jobs("C", recs) if r == "bsl"]
    assert {p["bsl_t1"] for p in bsl} == {0.2} and sorted(p["bsl_t2"] for p in bsl) == [1.1, 1.2, 1.3]
    seeds = [(r, p, s) for r, p, s in bench.stage_jobs("D", recs) if r == "sl"]
    assert seeds == [("sl", {"learning_rate": 1e-2, "loss_tau": 0.2}, s) for s in bench.SEEDS]
    # Full DSL's grid names its gamma (the shipped default has the branch off); other gammas are variants.
    assert not bench.is_variant({"loss_tau": 0.1, **bench.FULL_DSL})
    assert bench.is_variant({"dsl_gamma": -0.5}) and bench.is_variant({"dsl_intensity": "lse", **bench.FULL_DSL})
    # Stage L: the other two lrs at each non-SL softmax row's best point; a winner there moves its seeds.
    lrs = bench.stage_jobs("L", recs)
    assert lrs == [("dsl", {"loss_tau": 0.05, "learning_rate": lr}, bench.TUNE_SEED) for lr in (1e-3, 1e-1)]
    recs.append(rec("dsl", {"loss_tau": 0.05, "learning_rate": 1e-1}, 0.2))
    assert [p for r, p, _ in bench.stage_jobs("D", recs) if r == "dsl"] == [{"loss_tau": 0.05, "learning_rate": 1e-1}] * 2


def test_lightgcn_rows_run_at_mf_s_chosen_points():
    def rec(row, point, ndcg):
        return {"row": row, "point": point, "seed": bench.TUNE_SEED, "best_valid": {"ndcg@20": ndcg}}

    mf = [rec("sl", {"loss_tau": 0.1}, 0.11), rec("sl", {"loss_tau": 0.2}, 0.09), rec("psl-atan", {"loss_tau": 0.05}, 0.1),
          rec("dsl", {"loss_tau": 0.1}, 0.1)]
    jobs = bench.stage_jobs("T", [], bench.LIGHTGCN, mf)
    assert jobs == [("sl", {"loss_tau": 0.1}, bench.TUNE_SEED), ("dsl", {"loss_tau": 0.1}, bench.TUNE_SEED),
                    ("psl-atan", {"loss_tau": 0.05}, bench.TUNE_SEED)]  # PSL's other activations last
    lgcn = [rec("sl", {"loss_tau": 0.1}, 0.12)]
    assert bench.stage_jobs("D", lgcn, bench.LIGHTGCN) == [("sl", {"loss_tau": 0.1}, s) for s in bench.SEEDS]


def test_lightgcn_grid_steps_around_mf_s_point_and_seeds_follow_its_best():
    def rec(row, point, ndcg):
        return {"row": row, "point": point, "seed": bench.TUNE_SEED, "best_valid": {"ndcg@20": ndcg}}

    mf = [rec("sl", {"learning_rate": 1e-3, "loss_tau": 0.1}, 0.11),
          rec("bsl", {"learning_rate": 1e-3, "bsl_t1": 0.1, "bsl_t2": 1.2}, 0.12)]
    jobs = bench.stage_jobs("G", [], bench.LIGHTGCN, mf)
    assert jobs == [("sl", {"learning_rate": 1e-3, "loss_tau": t}, bench.TUNE_SEED) for t in (0.05, 0.2)] + [
        ("bsl", {"learning_rate": 1e-3, "bsl_t1": 0.1, "bsl_t2": t2}, bench.TUNE_SEED) for t2 in (1.1, 1.3)]
    lgcn = [rec("sl", {"learning_rate": 1e-3, "loss_tau": 0.1}, 0.11),
            rec("sl", {"learning_rate": 1e-3, "loss_tau": 0.2}, 0.12)]  # a grid point beats MF's on LightGCN
    assert bench.stage_jobs("G", lgcn, bench.LIGHTGCN, mf)[:2] == jobs[:2]  # the grid still incomplete: no edge
    lgcn.append(rec("sl", {"learning_rate": 1e-3, "loss_tau": 0.05}, 0.10))
    assert [p for r, p, _ in bench.stage_jobs("G", lgcn, bench.LIGHTGCN, mf) if r == "sl"][2:] == [
        {"learning_rate": 1e-3, "loss_tau": 0.3}]  # best at the upper edge: one step further
    assert [p for r, p, _ in bench.stage_jobs("D", lgcn, bench.LIGHTGCN) if r == "sl"] == [
        {"learning_rate": 1e-3, "loss_tau": 0.2}] * len(bench.SEEDS)


@pytest.mark.parametrize("path", [p for p in CONFIGS if "-lightgcn-" in p.name], ids=lambda p: p.stem)
def test_lightgcn_configs_train_lightgcn_without_row_sparse_updates(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["model"] == "LightGCN" and not cfg.get("sparse_update")
