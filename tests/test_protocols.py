"""Robustness and fairness protocols: OOD split, noise injection, per-group metrics, the Collector
fix for RecBole's popularity metrics, key validation, and (slow) end-to-end runs."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.protocols.metrics import item_groups, pop_group_metrics
from recbole_dsl.protocols.noise import draw_false_positives, false_positive_counts, select_fn_pool
from recbole_dsl.protocols.ood_split import gini, main as ood_main, popularity_shift_split, write_ood_split
from recbole_dsl.protocols.settings import NOISE_ATTR

ML100K = Path(__import__("recbole").__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


def ml100k_pairs():
    data = np.loadtxt(ML100K, skiprows=1, usecols=(0, 1), dtype=np.int64)
    return data[:, 0], data[:, 1]


# ===================================================================================== OOD split
@pytest.fixture(scope="module")
def ood_ml100k():
    users, items = ml100k_pairs()
    return users, items, popularity_shift_split(users, items, 0.2, 0.1, seed=7)


def test_ood_split_sizes(ood_ml100k):
    users, items, label = ood_ml100k
    n = users.size
    assert (label == 2).sum() == round(0.2 * n) and (label == 1).sum() == round(0.1 * n)
    assert (label == 0).sum() == n - round(0.2 * n) - round(0.1 * n)


def test_ood_split_keeps_every_user_and_item_in_training(ood_ml100k):
    users, items, label = ood_ml100k
    train = label == 0
    assert set(items[label > 0]) <= set(items[train])  # every test / valid item still in training
    assert set(users) == set(users[train])  # every user keeps training data


def test_ood_test_is_far_less_popularity_skewed_than_training(ood_ml100k):
    users, items, label = ood_ml100k
    n_items = items.max() + 1
    g_train = gini(np.bincount(items[label == 0], minlength=n_items))
    g_test = gini(np.bincount(items[label == 2], minlength=n_items))
    assert g_test < 0.6 * g_train, (g_train, g_test)
    train_pop = np.bincount(items[label == 0], minlength=n_items)
    assert train_pop[items[label == 2]].mean() < 0.5 * train_pop[items[label == 0]].mean()
    # validation is drawn uniformly from training: in distribution
    assert train_pop[items[label == 1]].mean() > 0.9 * train_pop[items[label == 0]].mean()


def test_ood_same_seed_same_split_other_seed_other_split(ood_ml100k):
    users, items, label = ood_ml100k
    assert np.array_equal(label, popularity_shift_split(users, items, 0.2, 0.1, seed=7))
    assert not np.array_equal(label, popularity_shift_split(users, items, 0.2, 0.1, seed=8))


def test_ood_item_is_picked_uniformly_not_by_popularity():
    # item 1 has 90 interactions, items 2..10 have 10 each: test draws items uniformly, so item 1
    # gets about a tenth of the test set (not 90 / 180 of it)
    items = np.concatenate([np.ones(90, dtype=int), np.repeat(np.arange(2, 11), 10)])
    users = np.arange(items.size) % 60  # 60 users, every user has 3 interactions
    label = popularity_shift_split(users, items, test_ratio=0.2, valid_ratio=0.0, seed=0)
    share = (items[label == 2] == 1).mean()
    assert share < 0.25, share


@pytest.mark.parametrize("test_ratio, valid_ratio, match", [
    (0.0, 0.1, "test_ratio"), (1.0, 0.0, "test_ratio"), (0.2, -0.1, "valid_ratio"), (0.5, 0.5, "valid_ratio"),
    (float("nan"), 0.1, "test_ratio"),
])
def test_ood_bad_ratios(test_ratio, valid_ratio, match):
    users, items = np.arange(10), np.arange(10)
    with pytest.raises(ConfigError, match=match):
        popularity_shift_split(users, items, test_ratio, valid_ratio)


def test_ood_split_that_would_empty_a_user_or_item_is_an_error():
    # every user has 2 interactions, every item 2: at most 1 of each user's can move
    users = np.repeat(np.arange(10), 2)
    items = np.concatenate([np.arange(10), np.roll(np.arange(10), 1)])
    with pytest.raises(ConfigError, match="without|keeps a training"):
        popularity_shift_split(users, items, test_ratio=0.6, valid_ratio=0.0)


def test_write_ood_split_files_and_refusal_to_overwrite(tmp_path):
    stats = write_ood_split("ml-100k", str(tmp_path), seed=3, name="ood", test_ratio=0.2, valid_ratio=0.1)
    folder = tmp_path / "ood"
    header = ML100K.read_text().splitlines()[0]
    total = 0
    for split in ("train", "valid", "test"):
        lines = (folder / f"ood.{split}.inter").read_text().splitlines()
        assert lines[0] == header
        total += len(lines) - 1
        assert stats[f"{split}_interactions"] == len(lines) - 1
    assert total == 100_000
    assert (folder / "ood.item").is_file() and (folder / "ood.user").is_file()
    assert json.loads((folder / "ood.split.json").read_text())["seed"] == 3
    # every source line lands in exactly one split, unchanged
    src = sorted(ML100K.read_text().splitlines()[1:])
    out = sorted(sum(((folder / f"ood.{s}.inter").read_text().splitlines()[1:] for s in ("train", "valid", "test")), []))
    assert src == out
    before = (folder / "ood.test.inter").read_text()
    with pytest.raises(ConfigError, match="already there"):
        write_ood_split("ml-100k", str(tmp_path), seed=4, name="ood")
    assert (folder / "ood.test.inter").read_text() == before
    write_ood_split("ml-100k", str(tmp_path), seed=4, name="ood", overwrite=True)
    assert (folder / "ood.test.inter").read_text() != before


def test_ood_cli_exit_status(tmp_path, capsys):
    assert ood_main(["--dataset=ml-100k", f"--out={tmp_path}", "--seed=1", "--name=x"]) == 0
    assert "benchmark_filename: [train, valid, test]" in capsys.readouterr().out
    assert ood_main(["--dataset=ml-100k", f"--out={tmp_path}", "--seed=1", "--name=x"]) == 2
    assert "already there" in capsys.readouterr().err
    assert ood_main(["--dataset=nope", f"--out={tmp_path}"]) == 2
    assert ood_main(["--dataset=ml-100k", f"--out={tmp_path}", "--name=y", "--test_ratio=1.5"]) == 2


# ================================================================================ noise injection
def test_fn_pool_holds_out_the_ratio_and_keeps_every_user():
    rng = np.random.default_rng(0)
    users = np.concatenate([np.repeat(np.arange(50), rng.integers(1, 30, 50))])
    pool = select_fn_pool(users, 0.1, np.random.default_rng(1))
    assert pool.sum() == round(0.1 * users.size)
    assert set(users[~pool]) == set(users)
    assert np.array_equal(pool, select_fn_pool(users, 0.1, np.random.default_rng(1)))
    assert select_fn_pool(users, 0.0, rng).sum() == 0


def test_fn_pool_that_would_empty_a_user_is_an_error():
    users = np.arange(20)  # one interaction per user: nothing can be held out
    with pytest.raises(ConfigError, match="fn_pool_ratio.*without training data"):
        select_fn_pool(users, 0.1, np.random.default_rng(0))


def test_false_positive_counts_and_exclusions():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 60
    users = np.repeat(np.arange(n_users), rng.integers(1, 20, n_users))
    items = rng.integers(1, n_items, users.size)
    # valid / test interactions that must not be drawn either
    all_u = np.concatenate([users, np.arange(n_users)])
    all_i = np.concatenate([items, np.full(n_users, 59)])
    fu, fi = draw_false_positives(users, n_users, n_items, 0.4, all_u, all_i, np.random.default_rng(3))
    want = false_positive_counts(users, n_users, 0.4)
    assert np.array_equal(np.bincount(fu, minlength=n_users), want)
    assert np.array_equal(want, np.floor(0.4 * np.bincount(users, minlength=n_users) + 0.5))
    seen = set(zip(all_u.tolist(), all_i.tolist()))
    assert not any((u, i) in seen for u, i in zip(fu.tolist(), fi.tolist()))
    assert len(set(zip(fu.tolist(), fi.tolist()))) == fu.size  # distinct
    assert fi.min() >= 1 and fi.max() < n_items
    fu2, fi2 = draw_false_positives(users, n_users, n_items, 0.4, all_u, all_i, np.random.default_rng(3))
    assert np.array_equal(fi, fi2)


def test_false_positives_are_capped_by_the_free_items():
    # user 0 has interacted with 8 of the 9 real items: at most 1 false positive is possible
    users = np.zeros(8, dtype=int)
    items = np.arange(1, 9)
    fu, fi = draw_false_positives(users, 1, 10, 0.9, users, items, np.random.default_rng(0))
    assert fu.tolist() == [0] and fi.tolist() == [9]


# ================================================================================ fairness metrics
COUNTS = np.array([0, 10, 8, 6, 4, 2, 0], dtype=float)  # id 0 = padding, item 6 unseen in training


def test_item_groups_by_items_and_by_interactions():
    assert item_groups(COUNTS, 2, "items").tolist() == [-1, 1, 1, 1, 0, 0, 0]
    # interactions: midpoints of the cumulative share 0, 1/30, 4/30, 9/30, 16/30, 25/30
    assert item_groups(COUNTS, 2, "interactions").tolist() == [-1, 1, 1, 0, 0, 0, 0]
    g10 = item_groups(np.arange(101, dtype=float), 10, "items")
    assert np.bincount(g10[1:]).tolist() == [10] * 10 and g10[1] == 0 and g10[100] == 9


def hand_example():
    """Two users, top-3 lists; items 1, 2, 3 are group 1 (head), 4, 5, 6 group 0 (tail).
    A: top [1, 5, 2], test {5, 2, 6}; B: top [4, 3, 1], test {1}."""
    rec_items = np.array([[1, 5, 2], [4, 3, 1]])
    hits = np.array([[False, True, True], [False, False, True]])
    pos_len = np.array([3, 1])
    pos_groups = np.array([[2, 1], [0, 1]])  # A: 5, 6 tail, 2 head; B: 1 head
    return rec_items, hits, pos_len, pos_groups, item_groups(COUNTS, 2, "items")


def test_per_group_metrics_within_hand_computed():
    r = pop_group_metrics(*hand_example(), topk=[1, 3], mode="within")
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    # tail: only A has tail test items (2 of them); its tail hit is item 5 at rank 2
    assert r["ndcg"][0].tolist() == pytest.approx([0.0, d2 / (1 + d2)])
    assert r["recall"][0].tolist() == pytest.approx([0.0, 1 / 2])
    # head: A's item 2 at rank 3, B's item 1 at rank 3, one head test item each
    assert r["ndcg"][1].tolist() == pytest.approx([0.0, d3])
    assert r["recall"][1].tolist() == pytest.approx([0.0, 1.0])


def test_per_group_metrics_contribution_hand_computed_and_sums_to_the_total():
    r = pop_group_metrics(*hand_example(), topk=[1, 3], mode="contribution")
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    idcg_a = 1 + d2 + d3
    assert r["ndcg"][:, 1].tolist() == pytest.approx([(d2 / idcg_a) / 2, (d3 / idcg_a + d3) / 2])
    assert r["recall"][:, 1].tolist() == pytest.approx([(1 / 3) / 2, (1 / 3 + 1) / 2])
    # the groups add up to the overall NDCG@K and Recall@K (no hit at rank 1 for either user)
    ndcg3 = ((d2 + d3) / idcg_a + d3) / 2
    recall3 = (2 / 3 + 1) / 2
    assert r["ndcg"].sum(axis=0).tolist() == pytest.approx([0.0, ndcg3])
    assert r["recall"].sum(axis=0).tolist() == pytest.approx([0.0, recall3])


def test_per_group_metric_of_an_empty_group_is_nan():
    rec_items, hits, pos_len, _, groups = hand_example()
    pos_groups = np.array([[0, 3], [0, 1]])
    r = pop_group_metrics(rec_items, np.zeros_like(hits), pos_len, pos_groups, groups, [3], "within")
    assert math.isnan(r["ndcg"][0, 0]) and r["ndcg"][1, 0] == 0


# ======================================================= Collector: RecBole's metrics and the plugin's
class Cfg(dict):
    def __getitem__(self, key):
        return self.get(key)


def collect(metrics, pop_groups=2):
    """Run the plugin's Collector and RecBole's Evaluator on the hand example (as full-sort scores)."""
    from recbole.evaluator import Evaluator
    from types import SimpleNamespace

    from recbole_dsl.protocols.collector import Collector
    from recbole_dsl.protocols.metrics import register_metrics

    register_metrics()  # what building a plugin Config does (this test builds none)
    cfg = Cfg(metrics=metrics, topk=[1, 3], eval_args={"mode": "full"}, device=torch.device("cpu"),
              metric_decimal_place=6, ITEM_ID_FIELD="item_id", USER_ID_FIELD="user_id", tail_ratio=0.5,
              pop_groups=pop_groups, pop_group_by="items", pop_group_mode="within")
    counter = Counter({i: int(c) for i, c in enumerate(COUNTS) if c > 0})
    train = SimpleNamespace(dataset=SimpleNamespace(num=lambda field: 7, item_counter=counter, user_counter=Counter()))
    col = Collector(cfg)
    col.data_collect(train)
    scores = torch.full((2, 7), -1e9)
    for u, top in enumerate([[1, 5, 2], [4, 3, 1]]):
        scores[u, top] = torch.tensor([3.0, 2.0, 1.0])
    pos_u, pos_i = torch.tensor([0, 0, 0, 1]), torch.tensor([5, 2, 6, 1])
    col.eval_batch_collect(scores, None, pos_u, pos_i)
    return Evaluator(cfg).evaluate(col.get_data_struct()), col


def test_recbole_popularity_metrics_crash_with_recboles_collector():
    from recbole.evaluator.collector import Collector as RecBoleCollector
    from types import SimpleNamespace

    cfg = Cfg(metrics=["ItemCoverage"], topk=[3], eval_args={"mode": "full"}, device=torch.device("cpu"))
    col = RecBoleCollector(cfg)
    col.data_collect(SimpleNamespace(dataset=SimpleNamespace(num=lambda field: 7)))
    with pytest.raises(AttributeError, match="cpu"):
        col.get_data_struct()


def test_recbole_popularity_metrics_work_with_the_plugins_collector():
    res, _ = collect(["ItemCoverage", "GiniIndex", "AveragePopularity", "TailPercentage"])
    assert res["itemcoverage@3"] == pytest.approx(round(5 / 7, 6))  # items 1..5 recommended, 7 ids
    assert res["averagepopularity@1"] == pytest.approx((10 + 4) / 2)
    assert res["averagepopularity@3"] == pytest.approx(((10 + 2 + 8) / 3 + (4 + 6 + 10) / 3) / 2, abs=1e-5)
    assert 0 <= res["giniindex@3"] <= 1
    # tail_ratio 0.5 of the 5 counted items: the 2 least popular (5, 4); A has 5, B has 4
    assert res["tailpercentage@3"] == pytest.approx(1 / 3, abs=1e-5)


def test_pop_group_metrics_through_collector_and_evaluator():
    res, col = collect(["PopGroupNDCG", "PopGroupRecall"])
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    assert res["popgroupndcg_g1@3"] == pytest.approx(round(d2 / (1 + d2), 6))
    assert res["popgroupndcg_g2@3"] == pytest.approx(round(d3, 6))
    assert res["popgrouprecall_g1@3"] == 0.5 and res["popgrouprecall_g2@3"] == 1.0
    assert res["popgroupndcg_g1@1"] == 0
    # the per-evaluation entries are reset: a second evaluation does not accumulate
    assert "rec.pos_groups" not in col.data_struct


def test_pop_group_metrics_need_full_sort_evaluation():
    from recbole_dsl.protocols.metrics import PopGroupNDCG

    with pytest.raises(ConfigError, match="full"):
        PopGroupNDCG(Cfg(topk=[3], eval_args={"mode": {"valid": "uni100", "test": "full"}}, metric_decimal_place=4))


# ==================================================================================== validation
@pytest.mark.parametrize("over, match", [
    (dict(neg_sampler="nope"), r"neg_sampler='nope'.*in_batch.*popularity.*shared.*uniform"),
    (dict(neg_sampler="popularity", neg_pop_alpha=-1), "neg_pop_alpha=-1"),
    (dict(fn_pool_ratio=0.1, fn_noise_p=1.2), r"fn_noise_p=1.2.*\[0, 1\]"),
    (dict(fn_pool_ratio=0.1, fn_noise_p=-0.1), "fn_noise_p"),
    (dict(fn_noise_p=0.3), "fn_pool_ratio"),
    (dict(fn_pool_ratio=1.0), r"fn_pool_ratio=1.0.*\[0, 1\)"),
    (dict(fp_noise_ratio=1.0), r"fp_noise_ratio=1.0.*\[0, 1\)"),
    (dict(fp_noise_ratio=-0.2), "fp_noise_ratio"),
    (dict(neg_sampler="shared", fn_pool_ratio=0.1, fn_noise_p=0.3), "per-row sampler"),
    (dict(pop_groups=0), "pop_groups"),
    (dict(pop_group_mode="x"), "pop_group_mode"),
    (dict(rec_loss=None, fn_pool_ratio=0.1, fn_noise_p=0.3), "rec_loss"),
])
def test_bad_protocol_keys_fail_before_training(over, match):
    from recbole_dsl import Config

    with pytest.raises(ConfigError, match=match):
        Config(model="BPR", dataset="ml-100k", config_dict={"rec_loss": "SL", **over}, cmd_args=[])


# ================================================================================ end to end (slow)
@pytest.fixture
def one_thread():
    # End-to-end runs are several times faster single-threaded on a small, shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = {"epochs": 1, "neg_num": 32, "train_batch_size": 4096, "eval_batch_size": 409600, "embedding_size": 16,
        "show_progress": False, "state": "ERROR", "metrics": ["Recall", "NDCG"], "topk": [20],
        "valid_metric": "NDCG@20", "gpu_id": "", "learning_rate": 0.01}


@pytest.mark.slow
def test_noise_protocols_change_only_the_training_split(tmp_path, one_thread):
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_dsl import Config
    from recbole_dsl.protocols import data_preparation

    def prepared(**over):
        cfg = Config(model="BPR", dataset="ml-100k", config_dict={**FAST, "rec_loss": "SL", **over}, cmd_args=[])
        init_seed(cfg["seed"], cfg["reproducibility"])
        return data_preparation(cfg, create_dataset(cfg))

    def pairs(loader):
        f = loader._dataset.inter_feat
        return set(zip(f["user_id"].tolist(), f["item_id"].tolist()))

    clean = prepared()
    noisy = prepared(fn_pool_ratio=0.1, fn_noise_p=0.3, fp_noise_ratio=0.2)
    rec = getattr(noisy[0]._dataset, NOISE_ATTR)
    n_clean = len(clean[0]._dataset)
    assert rec.n_train_before == n_clean and rec.n_fn_pool == round(0.1 * n_clean)
    assert len(noisy[0]._dataset) == n_clean - rec.n_fn_pool + rec.n_fp
    # false positives: round(0.2 * user's remaining training count) each, never a real interaction
    kept_users = noisy[0]._dataset.inter_feat["user_id"].numpy()[: n_clean - rec.n_fn_pool]  # added rows come last
    assert rec.n_fp == int(false_positive_counts(kept_users, noisy[0]._dataset.user_num, 0.2).sum())
    everything = pairs(clean[0]) | pairs(clean[1]) | pairs(clean[2])
    fp = set(zip(rec.fp_user.tolist(), rec.fp_item.tolist()))
    assert not fp & everything and fp <= pairs(noisy[0])
    pool = set(zip(rec.fn_pool_user.tolist(), rec.fn_pool_item.tolist()))
    assert pool <= pairs(clean[0]) and not pool & pairs(noisy[0])
    # validation and test untouched
    assert pairs(noisy[1]) == pairs(clean[1]) and pairs(noisy[2]) == pairs(clean[2])


@pytest.mark.slow
@pytest.mark.parametrize("over", [
    dict(rec_loss="SL", neg_sampler="popularity", neg_pop_alpha=0.75, sl_log_q_correction=True),
    dict(rec_loss="BSL", neg_sampler="in_batch", train_batch_size=512),
    dict(rec_loss="DSL", neg_sampler="shared", neg_num=64),
    dict(rec_loss="PSL", fn_pool_ratio=0.1, fn_noise_p=0.3),
    dict(rec_loss="BPR", fp_noise_ratio=0.2,
         metrics=["Recall", "NDCG", "PopGroupNDCG", "ItemCoverage", "GiniIndex", "AveragePopularity", "TailPercentage"]),
])
def test_end_to_end_samplers_and_protocols(over, tmp_path, one_thread):
    from recbole_dsl import run_recbole_dsl

    res = run_recbole_dsl(model="BPR", dataset="ml-100k", config_dict={**FAST, "checkpoint_dir": str(tmp_path), **over})
    test = res["test_result"]
    assert 0 < test["ndcg@20"] < 1
    if "PopGroupNDCG" in over.get("metrics", []):
        assert len([k for k in test if k.startswith("popgroupndcg_g")]) == 10
        assert 0 < test["itemcoverage@20"] <= 1


@pytest.mark.slow
def test_any_recbole_model_trains_on_the_written_ood_split(tmp_path, one_thread):
    from recbole_dsl import run_recbole_dsl

    write_ood_split("ml-100k", str(tmp_path / "data"), seed=1, name="ml-ood")
    split = {"data_path": str(tmp_path / "data"), "dataset": "ml-ood", "benchmark_filename": ["train", "valid", "test"]}
    for over in (dict(rec_loss="SL"), dict(rec_loss=None)):  # the plugin's loss, and RecBole's own BPR
        res = run_recbole_dsl(model="BPR", dataset="ml-ood", config_dict={**FAST, **split, "checkpoint_dir": str(tmp_path), **over})
        assert 0 < res["test_result"]["ndcg@20"] < 1


# ======================================================================================= examples
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "protocols").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_are_valid(path, tmp_path):
    from recbole_dsl import Config

    over = {}
    if path.stem == "ood":
        write_ood_split("ml-100k", str(tmp_path), seed=2024, name="ml-100k-ood")
        over = {"data_path": str(tmp_path)}
    dataset = None if path.stem == "ood" else "ml-100k"  # ood.yaml names its dataset
    cfg = Config(model="BPR", dataset=dataset, config_file_list=[str(path)], config_dict=over, cmd_args=[])
    assert cfg["rec_loss"] is not None
