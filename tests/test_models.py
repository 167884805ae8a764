"""Every supported RecBole general model x every loss of the registry, on a small slice of ml-100k.

The slice (the first 100 users of ml-100k, their first 50 interactions each: about 4,300
interactions, 770 items) is written as an atomic dataset to a temporary folder; models are
shrunk (embedding size 8, 8 negatives, 2 epochs), so the whole matrix runs in a few minutes
on 2 CPU cores.
"""
import math

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_model as recbole_get_model, init_seed

from recbole_dsl import ADAPTERS, LOSSES, Config, ConfigError, get_model, get_trainer
from recbole_dsl.adapters import REFUSED, EmbeddingAdapter, LogitsAdapter, PairAdapter
from recbole_dsl.adapters.graph import LightPropagationAdapter

from helpers import FAST

pytestmark = pytest.mark.slow

# The end-to-end tests' FAST settings, shrunk further for the model x loss matrix.
BASE = {
    **FAST,
    "epochs": 2,
    "eval_step": 2,  # one validation pass, after the second epoch
    "neg_num": 8,
    "train_batch_size": 512,
    "eval_batch_size": 1_000_000,
    "embedding_size": 8,
    "seed": 2020,
    "slk_k": 5,  # SL@K's sample quantile needs K <= neg_num + 1 (its default K = 20 needs 19+ negatives)
}

# Shrunk model settings (every model's own YAML defaults otherwise).
MODEL_KW = {
    "NCL": dict(num_clusters=8, warm_up_step=0),  # warm_up_step 0: the prototype term is logged from epoch 0
    "ConvNCF": dict(embedding_size=16, cnn_channels=[1, 4, 4], cnn_kernels=[4, 4], cnn_strides=[4, 4]),
    "NAIS": dict(weight_size=8),
    "NGCF": dict(hidden_size_list=[8, 8]),
    "DMF": dict(user_embedding_size=8, item_embedding_size=8, user_hidden_size_list=[8], item_hidden_size_list=[8]),
    "NeuMF": dict(mf_embedding_size=8, mlp_embedding_size=8, mlp_hidden_size=[8]),
    "NNCF": dict(ui_embedding_size=8, neigh_embedding_size=8, num_conv_kernel=8, mlp_hidden_size=[8]),
    "MultiVAE": dict(mlp_hidden_size=[32], latent_dimension=16),
    "MultiDAE": dict(mlp_hidden_size=[32], latent_dimension=16),
    "RaCT": dict(mlp_hidden_size=[32], latent_dimension=16, pretrain_epochs=2, save_step=1),
    "MacridVAE": dict(encoder_hidden_size=[32], kfac=4, reg_weights=[0.001, 0.001]),
    "RecVAE": dict(hidden_dimension=32, latent_dimension=16),
}
# Models RecBole trains on its UserDataLoader: batch size counts users there.
USER_LOADER = {"MultiVAE", "MultiDAE", "MacridVAE", "RecVAE", "RaCT", "CDAE", "ENMF"}
USER_BATCH = 16

# The auxiliary terms each model's own loss has, which must be logged as loss parts after the
# recommendation term (in this order).
EXPECTED_AUX = {
    "BPR": (), "DMF": (), "NeuMF": (), "NNCF": (), "MultiDAE": (),
    "LightGCN": ("reg",), "NGCF": ("reg",), "SpectralCF": ("reg",), "SimpleX": ("reg",),
    "FISM": ("reg",), "ENMF": ("reg",), "CDAE": ("reg",), "ConvNCF": ("reg",), "NAIS": ("reg",),
    "DGCF": ("reg", "cor"), "SGL": ("reg", "ssl"), "NCL": ("reg", "ssl", "proto"),
    "MultiVAE": ("kl",), "RecVAE": ("kl",), "RaCT": ("kl",), "MacridVAE": ("kl", "reg"),
}
SUPPORTED = sorted(EXPECTED_AUX)


@pytest.fixture(scope="module")
def slice_data(slice_root):
    """Loaders of the slice: one set of interaction loaders, one of user loaders (autoencoders).
    With rec_loss set RecBole's loader samples nothing, so every model of a kind shares them."""
    root = slice_root
    out = {"root": root}
    for kind, model, batch in (("inter", "BPR", BASE["train_batch_size"]), ("user", "MultiDAE", USER_BATCH)):
        cfg = Config(model, "ml-slice", config_dict=dict(BASE, rec_loss="SL", data_path=str(root),
                                                         train_batch_size=batch, checkpoint_dir=str(root)),
                     cmd_args=[])
        out[kind] = data_preparation(cfg, create_dataset(cfg))
    return out


def make(model, loss, slice_data, tmp_path, **kw):
    kw = dict(BASE, **MODEL_KW.get(model, {}), rec_loss=loss, data_path=str(slice_data["root"]),
              checkpoint_dir=str(tmp_path), **kw)
    if model in USER_LOADER:
        kw["train_batch_size"] = USER_BATCH
    config = Config(model, "ml-slice", config_dict=kw, cmd_args=[])
    init_seed(config["seed"], True)
    data = slice_data["user" if model in USER_LOADER else "inter"]
    net = get_model(model)(config, data[0]._dataset).to(config["device"])
    return config, net, get_trainer(config["MODEL_TYPE"], model)(config, net), data


def assert_metrics(result):
    assert set(result) == {"recall@20", "ndcg@20"}, result
    for v in result.values():
        assert math.isfinite(v) and 0.0 <= v <= 1.0, result


def test_every_trainable_general_model_is_supported_or_refused():
    import recbole.model.general_recommender as general

    names = {n for n in dir(general) if isinstance(getattr(general, n), type)}
    assert set(SUPPORTED) == set(ADAPTERS.names())
    assert names == set(SUPPORTED) | set(REFUSED)


@pytest.mark.parametrize("loss", LOSSES.names())
@pytest.mark.parametrize("model", SUPPORTED)
def test_model_trains_with_loss(model, loss, slice_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config, net, trainer, (train, valid, test) = make(model, loss, slice_data, tmp_path)
    assert type(net).__name__ == model and isinstance(net, recbole_get_model(model))
    # one adapter instance per model, owning its state; no plugin state parked on RecBole's model
    assert type(net.rec_adapter) is ADAPTERS.get(model) and net.rec_adapter.model is net
    assert not [k for k in vars(net) if k.startswith("_rl_")]
    aux_keys = []
    aux_losses = net.rec_adapter.aux_losses

    def recording_aux(*a):
        aux = aux_losses(*a)
        aux_keys.append(tuple(aux))
        return aux

    monkeypatch.setattr(net.rec_adapter, "aux_losses", recording_aux)

    # Never the built-in loss: RecBole's own calculate_loss must not run.
    def builtin(*a, **k):
        raise AssertionError(f"{model}'s built-in calculate_loss was called with rec_loss set")

    monkeypatch.setattr(recbole_get_model(model), "calculate_loss", builtin)

    epochs = []
    train_epoch = trainer._train_epoch

    def recording(*a, **k):
        out = train_epoch(*a, **k)
        epochs.append(out if isinstance(out, tuple) else (out,))
        return out

    trainer._train_epoch = recording
    _, best_valid = trainer.fit(train, valid, saved=True)

    assert len(epochs) == 2
    assert set(aux_keys) == {EXPECTED_AUX[model]}  # the auxiliary terms by name, in logging order
    for parts in epochs:
        # the recommendation term, then the model's own auxiliary terms, each logged
        assert len(parts) == 1 + len(EXPECTED_AUX[model]), parts
        assert all(math.isfinite(p) for p in parts), parts
    assert epochs[1][0] < epochs[0][0], f"the training loss did not go down: {epochs}"

    if model == "RaCT":  # RaCTTrainer's actor pre-training saves checkpoints but does not validate
        assert best_valid is None
        best_valid = trainer.evaluate(valid, load_best_model=False)
    assert_metrics(best_valid)
    assert_metrics(trainer.evaluate(test, load_best_model=True))


ALL_ITEMS_MODELS = [m for m in SUPPORTED if ADAPTERS.get(m).supports_all_items]


@pytest.mark.parametrize("model", ALL_ITEMS_MODELS)
def test_model_trains_with_the_exact_softmax(model, slice_data, tmp_path):
    # neg_sampler all: SL over every other item, with the model's own auxiliary terms kept.
    torch.set_num_threads(1)
    config, net, trainer, (train, valid, test) = make(model, "SL", slice_data, tmp_path, neg_sampler="all",
                                                      all_block_size=97)
    if model == "NCL":  # NCLTrainer.fit runs the E-step before the first epoch
        net.e_step()
    parts = [trainer._train_epoch(train, e) for e in range(2)]
    parts = [p if isinstance(p, tuple) else (p,) for p in parts]
    assert all(len(p) == 1 + len(EXPECTED_AUX[model]) and all(math.isfinite(x) for x in p) for p in parts), parts
    assert parts[1][0] < parts[0][0], parts
    assert_metrics(trainer.evaluate(valid, load_best_model=False))


@pytest.mark.parametrize("model", ["BPR", "LightGCN"])
def test_dsl_catalogue_slate_is_the_top_of_every_non_positive_item(model, slice_data, tmp_path):
    # dsl_slate_source: catalogue with shared negatives: the slate handed to the loss is each row's
    # K best-scoring items over the whole catalogue, its user's training positives left out (checked
    # against a dense [B, n_items] computation), and training runs to sane metrics.
    torch.set_num_threads(1)
    k = 20  # more than neg_num: the slate is not bounded by the sampled negatives
    config, net, trainer, (train, valid, test) = make(
        model, "DSL", slice_data, tmp_path, neg_sampler="shared", neg_num=8, dsl_slate_source="catalogue",
        dsl_slate_size=k, dsl_gamma=0.5)
    assert net.rec_loss_fn.needs.catalogue_slate == k and net.catalogue is not None
    assert net.catalogue.positives is net.neg_sampler.positives  # one positive table per run
    batch = next(iter(train)).to(config["device"])
    rows = net.rec_adapter.rows(batch)
    out = net.rec_adapter.forward(rows, net.neg_sampler.sample(rows.user, rows.pos_item).items)
    got = net.rec_adapter.catalogue_top(out, rows, net.catalogue.sample(rows.user, rows.pos_item), k)
    u = torch.nn.functional.normalize(out.user_e.detach(), dim=-1)
    items = torch.nn.functional.normalize(out.items.detach(), dim=-1)
    dense = u @ items.T
    ds = train._dataset
    seen = torch.zeros(net.n_users, net.n_items, dtype=torch.bool)
    seen[ds.inter_feat[ds.uid_field], ds.inter_feat[ds.iid_field]] = True
    dense[seen[rows.user]] = float("-inf")
    dense[torch.arange(len(rows.user)), rows.pos_item] = float("-inf")
    dense[:, 0] = float("-inf")  # RecBole's padding item
    torch.testing.assert_close(got, torch.topk(dense, k, dim=1).values)
    trainer.fit(train, valid, saved=False, show_progress=False)
    assert_metrics(trainer.evaluate(test, load_best_model=False))


def test_dsl_catalogue_slate_is_refused_where_it_is_not_served(slice_data, tmp_path):
    with pytest.raises(ConfigError, match=r"dsl_slate_source='catalogue'.*negatives for MultiDAE"):
        make("MultiDAE", "DSL", slice_data, tmp_path, dsl_slate_source="catalogue", dsl_slate_size=5,
             dsl_gamma=0.5)  # the slate is only read by the temperature branch


@pytest.mark.parametrize("model", [m for m in SUPPORTED if m not in ALL_ITEMS_MODELS])
def test_exact_softmax_is_refused_where_it_is_not_served(model, slice_data, tmp_path):
    with pytest.raises(ConfigError, match=r"neg_sampler='all'.*a sampled negative sampler for " + model):
        make(model, "SL", slice_data, tmp_path, neg_sampler="all")


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,reason", [
    *sorted(REFUSED.items()),
    ("SASRec", "sequential model"),
    ("FM", "context model"),
    ("KGAT", "knowledge model"),
])
def test_refused_models_fail_with_their_reason(model, reason, slice_data):
    with pytest.raises(ConfigError, match=r"model='%s'" % model) as e:
        Config(model, "ml-slice", config_dict=dict(BASE, rec_loss="SL", data_path=str(slice_data["root"])),
               cmd_args=[])
    assert reason[:40] in str(e.value) and "'LightGCN'" in str(e.value) and "'MultiVAE'" in str(e.value)


@pytest.mark.parametrize("stage", ["critic_pretrain", "finetune"])
def test_ract_stages_without_a_recommendation_term_are_refused(stage, slice_data, tmp_path):
    with pytest.raises(ConfigError, match=r"train_stage='%s'.*no recommendation term" % stage):
        make("RaCT", "SL", slice_data, tmp_path, train_stage=stage, pre_model_path=str(tmp_path / "none.pth"))


# ---------------------------------------------------------------------------------------------
def _one_batch(data):
    return next(iter(data[0]))


def adapter_models(base):
    return [m for m in SUPPORTED if issubclass(ADAPTERS.get(m), base)]


@pytest.mark.parametrize("model", adapter_models(PairAdapter) + adapter_models(LogitsAdapter)
                         + ["LightGCN", "NGCF", "SpectralCF", "DGCF", "NCL", "SGL"])
def test_one_forward_pass_per_batch(model, slice_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    config, net, trainer, data = make(model, "SL", slice_data, tmp_path)
    if model == "NCL":
        net.e_step()
    net.train()
    calls = []
    forward = net.forward

    def counting(*args, **kw):
        calls.append([a.shape[0] for a in args if isinstance(a, torch.Tensor)])
        return forward(*args, **kw)

    monkeypatch.setattr(net, "forward", counting)
    if isinstance(net.rec_adapter, LightPropagationAdapter):  # the adapter propagates itself (in CSR)
        layers = net.rec_adapter.layers
        monkeypatch.setattr(net.rec_adapter, "layers", lambda *a: calls.append(["graph"]) or layers(*a))
    batch = _one_batch(data).to(net.device)
    net.calculate_loss(batch)
    if isinstance(net.rec_adapter, PairAdapter):  # the B x (1 + N) pairs in one call, no tiling of the batch
        assert calls == [[len(batch) * (1 + config["neg_num"])] * 2]
    elif isinstance(net.rec_adapter, LogitsAdapter):  # one [B_users, n_items] pass over the batch users
        assert len(calls) == 1 and calls[0][0] == len(batch)
    else:  # one propagation (SGL: plus its two perturbed views, for its own contrastive term)
        assert len(calls) == (3 if model == "SGL" else 1)


def _sgl_views(net, view):
    """SGL: the adapter's and the model's propagation of one of its graphs."""
    graph = getattr(net, view)
    return net.rec_adapter.layers(graph)[:2], net.forward(graph)


@pytest.mark.parametrize("model,view", [("LightGCN", None), ("NCL", None), ("SGL", "train_graph"),
                                        ("SGL", "sub_graph1"), ("SGL-RW", "sub_graph2")])
def test_adapter_propagation_equals_the_models_forward(model, view, slice_data, tmp_path):
    """Same embeddings and the same gradients on the model's tables as RecBole's COO forward
    (SGL: its training graph and its two perturbed views, edge dropout and random walk)."""
    kw = {"type": "RW"} if model == "SGL-RW" else {}
    _, net, _, _ = make(model.split("-")[0], "SL", slice_data, tmp_path, **kw)
    net.train()  # SGL builds its perturbed views here
    if view is None:
        ours, theirs = net.rec_adapter.propagate(), net.forward()
    else:
        ours, theirs = _sgl_views(net, view)
        assert not isinstance(getattr(net, view), list) or len(getattr(net, view)) == net.n_layers
    assert len(ours) == len(theirs)
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if model == "NCL":
        assert len(ours[2]) == len(theirs[2])
        for a, b in zip(ours[2], theirs[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(ours[1])
    tables = [net.user_embedding.weight, net.item_embedding.weight]
    g_ours = torch.autograd.grad((ours[0].sum() + (ours[1] * w).sum()), tables)
    g_theirs = torch.autograd.grad((theirs[0].sum() + (theirs[1] * w).sum()), tables)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


PAIR_MODELS = adapter_models(PairAdapter)


@pytest.mark.parametrize("pair_score_fn", ["tanh", "logit"])
@pytest.mark.parametrize("model", PAIR_MODELS)
def test_pair_scores_are_the_models_logits_through_pair_score_fn(model, pair_score_fn, slice_data, tmp_path,
                                                                 monkeypatch):
    """The loss gets tanh(logit) (default) or the logit of each of the B x (1 + N) pairs, with the
    positive in column 0, and the negatives the sampler drew."""
    torch.set_num_threads(1)
    config, net, trainer, data = make(model, "SL", slice_data, tmp_path, pair_score_fn=pair_score_fn)
    net.eval()  # no dropout: the model's forward is deterministic
    seen = {}
    loss_forward = net.rec_loss_fn.forward

    def spy(pos, neg, ctx):
        seen.update(pos=pos.detach(), neg=neg.detach())
        return loss_forward(pos, neg, ctx)

    monkeypatch.setattr(net.rec_loss_fn, "forward", spy)
    sample = net.neg_sampler.sample
    monkeypatch.setattr(net.neg_sampler, "sample", lambda u, p: seen.setdefault("negs", sample(u, p)))
    batch = _one_batch(data).to(net.device)
    with torch.no_grad():
        net.calculate_loss(batch)
        user, pos_item = batch[config["USER_ID_FIELD"]], batch[config["ITEM_ID_FIELD"]]
        neg_item = seen["negs"].items
        items = torch.cat([pos_item.unsqueeze(1), neg_item], dim=1)
        logits = net.forward(user.unsqueeze(1).expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)
    expected = torch.tanh(logits) if pair_score_fn == "tanh" else logits
    torch.testing.assert_close(seen["pos"], expected[:, 0])
    torch.testing.assert_close(seen["neg"], expected[:, 1:])
    if pair_score_fn == "tanh":
        assert seen["neg"].abs().max() < 1


@pytest.mark.parametrize("loss", LOSSES.names())
def test_nais_stays_finite_with_bounded_scores(loss, slice_data, tmp_path):
    """NAIS's score is exponential in its attention logits; a softmax loss over its raw logits
    drives them to overflow (NaN within 150 batches on full ml-100k at lr 2e-3). Here a large
    learning rate reproduces that on the slice in a few dozen steps with pair_score_fn: logit,
    and the default tanh scores keep every loss finite over the same steps."""
    torch.set_num_threads(1)

    def first_nonfinite_step(pair_score_fn, steps=80):
        config, net, trainer, data = make("NAIS", loss, slice_data, tmp_path, pair_score_fn=pair_score_fn,
                                          loss_tau=0.2)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        batches = list(data[0])
        net.train()
        for step in range(steps):
            opt.zero_grad()
            out = net.calculate_loss(batches[step % len(batches)].to(net.device))
            total = sum(out) if isinstance(out, tuple) else out
            if not torch.isfinite(total):
                return step
            total.backward()
            opt.step()
        return None

    if loss == "SL":  # the set-up does reproduce the divergence
        assert first_nonfinite_step("logit") is not None
    assert first_nonfinite_step("tanh") is None


@pytest.mark.parametrize("model", adapter_models(EmbeddingAdapter))
def test_full_sort_scores_follow_training_steps(model, slice_data, tmp_path):
    """The evaluation cache (propagated embeddings, item towers) is rebuilt after every training
    step, full-sort scores agree with predict(), and cosine scores stay in [-1, 1]."""
    torch.set_num_threads(1)
    config, net, trainer, data = make(model, "SL", slice_data, tmp_path)
    if model == "NCL":
        net.e_step()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    batch = _one_batch(data).to(net.device)
    users = torch.tensor([1, 2, 3, 5, 8])
    inter = Interaction({config["USER_ID_FIELD"]: users})

    def step():
        net.train()
        opt.zero_grad()
        loss = net.calculate_loss(batch)
        sum(loss if isinstance(loss, tuple) else (loss,)).backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            return net.full_sort_predict(inter).view(len(users), -1)

    first = step()
    second = step()
    assert not torch.allclose(first, second)
    with torch.no_grad():
        net.rec_adapter.invalidate()  # what an uncached pass gives
        fresh = net.full_sort_predict(inter).view(len(users), -1)
        items = torch.tensor([1, 7, 42, 300])
        pairs = Interaction({config["USER_ID_FIELD"]: users.repeat_interleave(4),
                             config["ITEM_ID_FIELD"]: items.repeat(len(users))})
        pair_scores = net.predict(pairs).view(len(users), 4)
    torch.testing.assert_close(second, fresh)
    torch.testing.assert_close(pair_scores, second[:, items])
    assert second.abs().max() <= 1 + 1e-5  # cosine (score_fn) in evaluation too


# ---------------------------------------------------------------------------------------------
def _builtin_and_ours(model, slice_data, tmp_path, **kw):
    """The model's own loss and the plugin's auxiliary terms on the same batch: same users,
    positives and (first) negative, model in eval mode (no dropout)."""
    torch.set_num_threads(1)
    config, net, trainer, data = make(model, "SL", slice_data, tmp_path, **kw)
    if model == "NCL":
        net.e_step()
    if model == "SGL":
        net.train()  # builds SGL's two perturbed views
    net.eval()
    batch = _one_batch(data).to(net.device)
    adapter = net.rec_adapter
    rows = adapter.rows(batch)
    neg = net.neg_sampler.sample(rows.user, rows.pos_item).items
    with torch.no_grad():
        out = adapter.forward(rows, neg)
        aux = tuple(adapter.aux_losses(out, rows, neg).values())
        inter = Interaction({net.USER_ID: rows.user, net.ITEM_ID: rows.pos_item, net.NEG_ITEM_ID: neg[:, 0]})
        own = recbole_get_model(model).calculate_loss(net, batch if adapter.user_batches else inter)
    return net, rows, neg, out, aux, own


@pytest.mark.parametrize("model", ["LightGCN", "NGCF", "SpectralCF", "SGL", "NCL"])
def test_graph_aux_terms_have_the_models_own_scale(model, slice_data, tmp_path):
    net, rows, neg, out, aux, own = _builtin_and_ours(model, slice_data, tmp_path)
    with torch.no_grad():
        users, items = net.rec_adapter.all_reps()
        u = users[rows.user]
        d = (u * items[rows.pos_item]).sum(-1) - (u * items[neg[:, 0]]).sum(-1)
        bpr = -torch.nn.functional.logsigmoid(d)
        bpr = bpr.sum() if model == "SGL" else bpr.mean()
    own_total = sum(own) if isinstance(own, tuple) else own
    torch.testing.assert_close(own_total.reshape(()), (bpr + sum(aux)).reshape(()), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ["MultiVAE", "MacridVAE", "RaCT"])
def test_vae_kl_terms_have_the_models_own_scale(model, slice_data, tmp_path):
    net, rows, neg, out, aux, own = _builtin_and_ours(model, slice_data, tmp_path, total_anneal_steps=0)
    with torch.no_grad():
        rm = net.get_rating_matrix(rows.batch_user)
        ce = -(torch.log_softmax(out.scores, 1) * rm).sum(1).mean()
    torch.testing.assert_close(own.reshape(()), (ce + sum(aux)).reshape(()), rtol=1e-4, atol=1e-6)


def test_cdae_regularisers_have_the_models_own_scale(slice_data, tmp_path):
    net, rows, neg, out, aux, own = _builtin_and_ours("CDAE", slice_data, tmp_path, reg_weight_1=0.01)
    with torch.no_grad():
        rm = net.get_rating_matrix(rows.batch_user)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.scores, rm, reduction="sum")
    torch.testing.assert_close(own.reshape(()), (bce + sum(aux)).reshape(()), rtol=1e-4, atol=1e-3)


def test_user_level_rows_are_the_batch_users_positives(slice_data, tmp_path):
    config, net, trainer, data = make("MultiVAE", "BSL", slice_data, tmp_path)
    batch = _one_batch(data)
    rows = net.rec_adapter.rows(batch)
    rm = net.get_rating_matrix(batch[net.USER_ID])
    assert rows.user.shape[0] == int(rm.sum())  # every positive of every batch user, once
    assert bool((rm[rows.row_of, rows.pos_item] == 1).all())
    assert torch.equal(rows.batch_user[rows.row_of], rows.user)
    # BSL's positive groups: chunks of up to positives_per_user rows of one user
    groups, counts = torch.unique(rows.group, return_counts=True)
    assert counts.max() == config["positives_per_user"]
    for g in groups[:20]:
        assert rows.user[rows.group == g].unique().numel() == 1
    net.rec_adapter.max_rows = 50  # the cap: a random subset of that size, the scale still per user
    capped = net.rec_adapter.rows(batch)
    assert capped.user.shape[0] == 50 and capped.total == rows.user.shape[0]
    assert net.rec_adapter.rec_scale(capped) == pytest.approx(rows.user.shape[0] / len(batch))


def test_user_grouped_batch_mode_leaves_user_loaders_alone(slice_data, tmp_path):
    config, net, trainer, (train, valid, test) = make("MultiDAE", "BSL", slice_data, tmp_path,
                                                      train_batch_mode="user", epochs=1)
    loaders = []
    train_epoch = trainer._train_epoch
    trainer._train_epoch = lambda data, *a, **k: loaders.append(type(data)) or train_epoch(data, *a, **k)
    trainer.fit(train, valid, saved=False)
    assert loaders == [type(train)]  # RecBole's UserDataLoader is kept (batches of users)
    assert_metrics(trainer.evaluate(test, load_best_model=False))


@pytest.mark.parametrize("mode", ["interaction", "user"])
def test_progress_bars_show_for_plugin_training_and_evaluation(mode, slice_data, tmp_path, capsys):
    # show_progress: RecBole's bars for every training epoch (the plugin's user-grouped loader
    # included) and for evaluation, with the plugin's loss path in the loop.
    torch.set_num_threads(1)
    config, net, trainer, (train, valid, test) = make("BPR", "SL", slice_data, tmp_path, train_batch_mode=mode)
    trainer.fit(train, valid, saved=False, show_progress=True)
    err = capsys.readouterr().err
    n = len(train)
    assert err.count("Train ") >= 2 and f"{n}/{n}" in err, err[-2000:]
    assert "Evaluate" in err, err[-2000:]
