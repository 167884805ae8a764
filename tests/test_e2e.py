"""End-to-end on the full ml-100k: every loss x MF and LightGCN trains and evaluates sanely.

(Every other supported model is trained with every loss on a small slice in test_models.py.)"""
import math

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model as recbole_get_model

from recbole_dsl import LOSSES, Config, get_model, get_trainer
from recbole_dsl.data import UserGroupedTrainDataLoader

from helpers import FAST

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    # One split for the whole module: rec_loss runs do not sample in RecBole's loader, so the
    # loaders are the same for every loss and model.
    d = tmp_path_factory.mktemp("data")
    config = Config("BPR", "ml-100k", config_dict=dict(FAST, rec_loss="SL", checkpoint_dir=str(d)), cmd_args=[])
    return data_preparation(config, create_dataset(config))


# The full-data runs cover the two reference backbones; test_models.py covers every model.
E2E_MODELS = ["BPR", "LightGCN"]

_TRAIN = []


@pytest.fixture(autouse=True)
def _data(ml100k):
    _TRAIN[:] = [ml100k[0]]


def make(model, loss, tmp_path, **kw):
    config = Config(model, "ml-100k", config_dict=dict(FAST, rec_loss=loss, checkpoint_dir=str(tmp_path), **kw),
                    cmd_args=[])
    net = get_model(model)(config, _TRAIN[0]._dataset).to(config["device"])
    return config, net, get_trainer(config["MODEL_TYPE"], model)(config, net)


def assert_sane(result):
    assert set(result) == {"recall@20", "ndcg@20"}
    for v in result.values():
        assert math.isfinite(v) and 0.0 <= v <= 1.0


@pytest.mark.parametrize("model", E2E_MODELS)
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_every_model(loss, model, ml100k, tmp_path):
    train, valid, test = ml100k
    torch.manual_seed(0)
    config, net, trainer = make(model, loss, tmp_path, epochs=2)
    assert type(net).__name__ == model and isinstance(net, recbole_get_model(model))
    before = trainer._train_epoch(train, 0)
    best_score, best_valid = trainer.fit(train, valid, saved=True)
    losses = before if isinstance(before, tuple) else (before,)
    assert all(math.isfinite(x) for x in losses)
    assert_sane(best_valid)
    result = trainer.evaluate(test, load_best_model=True)
    assert_sane(result)
    # better than random ranking (random Recall@20 on ml-100k is about 20/1682 ~ 0.012)
    assert result["recall@20"] > 0.03, result


@pytest.mark.parametrize("loss", [n for n, c in LOSSES.items() if c.supports_all])
def test_exact_softmax_trains_mf_with_every_loss_it_serves(loss, ml100k, tmp_path):
    # neg_sampler all on the whole ml-100k catalogue, in blocks smaller than it (1,682 items).
    train, valid, test = ml100k
    torch.manual_seed(0)
    config, net, trainer = make("BPR", loss, tmp_path, epochs=2, neg_sampler="all", all_block_size=1000)
    best_score, best_valid = trainer.fit(train, valid, saved=False)
    assert_sane(best_valid)
    assert best_valid["recall@20"] > 0.03, best_valid


@pytest.mark.parametrize("model", E2E_MODELS)
def test_checkpoint_is_reloaded_for_test(model, ml100k, tmp_path):
    train, valid, test = ml100k
    config, net, trainer = make(model, "SL", tmp_path)
    trainer.fit(train, valid, saved=True)
    reloaded = trainer.evaluate(test, load_best_model=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    assert trainer.evaluate(test, load_best_model=False) != reloaded  # the weights really changed
    assert trainer.evaluate(test, load_best_model=True) == reloaded  # and the checkpoint restores them


def test_user_grouped_batches_hold_several_positives_per_user(ml100k, tmp_path):
    train, valid, test = ml100k
    config, net, trainer = make("BPR", "BSL", tmp_path, train_batch_mode="user", positives_per_user=4,
                                 bsl_group_positives=True)
    loader = UserGroupedTrainDataLoader.wrap(train, 4)
    batch = next(iter(loader))
    users = batch[config["USER_ID_FIELD"]]
    _, counts = torch.unique(users, return_counts=True)
    assert counts.float().mean() > 3.0  # vs ~1.1 for shuffled interaction batches
    assert sum(len(b) for b in loader) == len(train._dataset)
    _, best_valid = trainer.fit(train, valid, saved=False)
    assert_sane(best_valid)


def test_cosine_training_scores_cosine_in_evaluation(ml100k, tmp_path):
    train, valid, test = ml100k
    config, net, trainer = make("BPR", "SL", tmp_path)
    net.eval()
    from recbole.data.interaction import Interaction
    inter = Interaction({config["USER_ID_FIELD"]: torch.tensor([1, 2])})
    scores = net.full_sort_predict(inter)
    assert scores.abs().max() <= 1.0 + 1e-5  # cosine, not raw dot products


@pytest.mark.parametrize("score_fn,path", [("cosine", "gather"), ("dot", "full")])
def test_dsl_diagnostics_are_logged_per_epoch(score_fn, path, ml100k, tmp_path, caplog):
    train, valid, test = ml100k
    config, net, trainer = make("BPR", "DSL", tmp_path, score_fn=score_fn, score_path=path, dsl_slate_size=8,
                                 dsl_gamma=0.5)  # the temperature branch is off by default
    assert net.rec_loss_fn.needs.affinity_alpha is not None
    with caplog.at_level("INFO"):
        trainer._train_epoch(train, 0)
    d = net.last_diagnostics
    assert {"dsl_tau_min", "dsl_tau_median", "dsl_tau_max", "dsl_w_min", "dsl_w_median", "dsl_w_max"} <= set(d)
    tau = config["loss_tau"]
    assert d["dsl_tau_min"] < tau < d["dsl_tau_max"]  # per-row temperatures spread around loss_tau
    assert d["dsl_w_min"] < 1.0 < d["dsl_w_max"]  # mean-one weights spread around 1
    assert "loss diagnostics" in caplog.text


def test_dsl_slate_larger_than_neg_num_is_refused(tmp_path):
    from recbole_dsl import ConfigError

    with pytest.raises(ConfigError, match=r"dsl_slate_size=64 .*neg_num=32"):
        Config("BPR", "ml-100k", config_dict=dict(FAST, rec_loss="DSL", dsl_slate_size=64), cmd_args=[])
