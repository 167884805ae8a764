"""benchmarks/synth.py (the synthetic dataset generator) and, slow, the smoke group of
benchmarks/bench_scale.py."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import synth  # noqa: E402

SIZES = dict(n_users=2_000, n_items=2_000, n_interactions=20_000)


def test_counts_are_exact_pairs_unique_and_every_user_has_the_minimum():
    users, items = synth.generate(**SIZES, zipf=1.0, seed=3, min_per_user=5)
    assert len(users) == len(items) == 20_000
    assert users.min() >= 0 and users.max() < 2_000 and items.min() >= 0 and items.max() < 2_000
    assert np.unique(users * 2_000 + items).size == 20_000
    per_user = np.bincount(users, minlength=2_000)
    assert per_user.min() >= 5 and per_user.max() > 20  # skewed activity, not 10 each


def test_a_small_catalogue_with_a_heavy_head_still_fills_every_user():
    # every user needs half the catalogue (the cap), far into a Zipf-2 tail: the top-up rounds
    users, items = synth.generate(n_users=10, n_items=20, n_interactions=100, zipf=2.0, seed=0)
    assert (np.bincount(users, minlength=10) == 10).all()
    assert np.unique(users * 20 + items).size == 100


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError):
        synth.generate(n_users=100, n_items=50, n_interactions=400, min_per_user=5)
    with pytest.raises(ValueError):
        synth.generate(n_users=10, n_items=20, n_interactions=101)  # over 10 users x (20 / 2)


@pytest.mark.parametrize("zipf", [0.5, 1.0])
def test_item_popularity_follows_the_requested_zipf_exponent(zipf):
    # ranks 1..200 of 2,000 items: expected counts >= ~10 (the noisy tail is left out), and the
    # head reaches ~70% of users at zipf 1 (some saturation: the fitted slope is ~0.93)
    _, items = synth.generate(**SIZES, zipf=zipf, seed=0)
    counts = np.sort(np.bincount(items, minlength=2_000))[::-1][:200]
    slope = np.polyfit(np.log(np.arange(1, 201)), np.log(counts), 1)[0]
    assert abs(-slope - zipf) < 0.25, slope


def test_files_are_deterministic_per_seed_and_reused(tmp_path):
    a = synth.ensure(tmp_path / "a", "s", **SIZES, seed=1)
    b = synth.ensure(tmp_path / "b", "s", **SIZES, seed=1)
    c = synth.ensure(tmp_path / "c", "s", **SIZES, seed=2)
    text = [open(x["path"]).read() for x in (a, b, c)]
    assert text[0] == text[1] and text[0] != text[2]
    lines = text[0].splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float" and len(lines) == 20_001
    assert not a["reused"] and synth.ensure(tmp_path / "a", "s", **SIZES, seed=1)["reused"]
    again = synth.ensure(tmp_path / "a", "s", **SIZES, seed=2)  # other parameters: written anew
    assert not again["reused"] and open(again["path"]).read() == text[2]
    assert json.loads((tmp_path / "a" / "s" / "s.json").read_text())["seed"] == 2


def test_the_written_file_loads_in_recbole(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    synth.ensure(tmp_path, "synth-t", **SIZES, seed=0)
    cfg = Config(model="BPR", config_dict={"data_path": str(tmp_path), "dataset": "synth-t", "state": "ERROR",
                                           "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    ds = create_dataset(cfg)
    assert ds.inter_num == 20_000
    assert ds.user_num == 2_001  # RecBole's padding id included
    assert "timestamp" in ds.inter_feat


@pytest.mark.slow
def test_bench_scale_smoke_group(tmp_path):
    results = tmp_path / "scale.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--group", "smoke", "--epochs", "1", "--threads", "1",
           "--results", str(results), "--synth-dir", str(tmp_path / "synth")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["name"] for r in recs] == ["synth-smoke/recbole-bpr", "synth-smoke/sl-u16"]
    for r in recs:
        assert "error" not in r, r
        assert math.isfinite(r["s_epoch"]) and r["s_epoch"] > 0 and len(r["s_per_epoch"]) == 1
        assert math.isfinite(r["peak_rss_mib"]) and r["peak_rss_mib"] > 0
        assert r["n_inter"] == 20_000 and r["n_train"] == 19_600 and r["batches_per_epoch"] == 10
    assert "| synth-smoke/sl-u16 |" in out.stdout and "commit" in out.stdout
    # resumable: a second call finds both runs for this commit and runs nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
    assert len(results.read_text().splitlines()) == 2


@pytest.mark.slow
def test_bench_scale_projects_an_epoch_with_its_start_up_once(tmp_path):
    results = tmp_path / "scale.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--only", "synth-smoke/sl-u16", "--epochs", "2",
           "--max-batches", "4", "--threads", "1", "--results", str(results), "--synth-dir", str(tmp_path / "synth")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert "error" not in rec, rec
    assert rec["projected_from_batches"] == 4 and rec["batches_per_epoch"] == 10
    assert len(rec["startup_s"]) == len(rec["s_per_epoch"]) == 2
    for startup, epoch in zip(rec["startup_s"], rec["s_per_epoch"]):
        # the start-up is counted once; the rest is 4 batches' time scaled by 10 / 4
        assert 0 < startup < epoch
