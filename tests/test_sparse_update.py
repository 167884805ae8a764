"""`sparse_update`: row-sparse gradients and the lazy Adam that follows them.

What must hold: the optimizer equals torch's Adam on dense gradients and a slow row-by-row
reference on sparse ones (untouched rows, and their moments, stay as they were); the sparse
score path gives the dense path's scores and, densified, its gradients, on every path and
sampler and for every loss; a run trains to sane metrics and its checkpoint loads; settings it
cannot serve are refused before anything is built.
"""
from __future__ import annotations

import math

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_dsl import LOSSES, Config, ConfigError, get_model, get_trainer
from recbole_dsl.checkpoint import load_checkpoint
from recbole_dsl.optim import LazyAdam
from recbole_dsl.samplers import SAMPLERS
from recbole_dsl.scoring import batch_scores, distinct

from helpers import FAST

DT = torch.float64


# -- the optimizer ------------------------------------------------------------------------------
def _steps(opt_cls, grads, wd=0.0, **kw):
    p = torch.nn.Parameter(torch.randn(6, 3, dtype=DT, generator=torch.Generator().manual_seed(0)))
    opt = opt_cls([p], lr=0.05, weight_decay=wd, **kw)
    for g in grads:
        p.grad = g(p).clone()
        opt.step()
    return p.detach(), opt


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lazy_adam_is_adam_on_dense_gradients(wd):
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(6, 3, dtype=DT, generator=gen) for _ in range(7)]
    fns = [lambda p, g=g: g for g in grads]
    ours, _ = _steps(LazyAdam, fns, wd)
    ref, _ = _steps(torch.optim.Adam, fns, wd, foreach=False)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def _slow_lazy_adam(p0, steps, lr=0.05, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Row by row, as the docstring of recbole_dsl.optim states it."""
    p = p0.clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, (rows, vals) in enumerate(steps, 1):
        g_rows = {}
        for r, val in zip(rows.tolist(), vals):
            g_rows[r] = g_rows.get(r, 0) + val
        for r, g in g_rows.items():
            g = g + wd * p[r]
            m[r] = b1 * m[r] + (1 - b1) * g
            v[r] = b2 * v[r] + (1 - b2) * g * g
            p[r] = p[r] - lr / (1 - b1 ** t) * m[r] / (v[r].sqrt() / math.sqrt(1 - b2 ** t) + eps)
    return p, m, v


@pytest.fixture(params=["row-wise", "masked"])
def update_mode(request, monkeypatch):
    """Both implementations of the lazy update: gathering the touched rows, or whole-table passes
    with a row mask (what LazyAdam uses when most rows are touched)."""
    import recbole_dsl.optim as optim

    monkeypatch.setattr(optim, "DENSE_ROWS_SHARE", 1.0 if request.param == "row-wise" else 0.0)
    return request.param


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lazy_adam_on_sparse_gradients_updates_touched_rows_only(wd, update_mode):
    gen = torch.Generator().manual_seed(2)
    # rows repeat within a step (summed) and rows 4, 5 are never touched
    steps = [(torch.tensor([0, 2, 2]), torch.randn(3, 3, dtype=DT, generator=gen)),
             (torch.tensor([1, 3]), torch.randn(2, 3, dtype=DT, generator=gen)),
             (torch.tensor([2, 0, 0, 1]), torch.randn(4, 3, dtype=DT, generator=gen))]
    fns = [lambda p, r=r, v=v: torch.sparse_coo_tensor(r.unsqueeze(0), v, (6, 3), check_invariants=True) for r, v in steps]
    p0 = torch.randn(6, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    ours, opt = _steps(LazyAdam, fns, wd)
    ref, m, v = _slow_lazy_adam(p0, steps, wd=wd)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    state = opt.state[opt.param_groups[0]["params"][0]]
    torch.testing.assert_close(state["exp_avg"], m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state["exp_avg_sq"], v, rtol=1e-12, atol=1e-14)
    assert torch.equal(ours[4:], p0[4:]) and not state["exp_avg"][4:].any()


def test_lazy_adam_with_every_row_touched_is_adam(update_mode):
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 3, dtype=DT, generator=gen) for _ in range(5)]
    sparse = [lambda p, g=g: g.to_sparse(sparse_dim=1) for g in grads]
    dense = [lambda p, g=g: g for g in grads]
    torch.testing.assert_close(_steps(LazyAdam, sparse)[0], _steps(torch.optim.Adam, dense, foreach=False)[0],
                               rtol=1e-12, atol=1e-14)


def test_lazy_adam_state_round_trips(update_mode):
    gen = torch.Generator().manual_seed(4)
    # element-sparse (sparse_dim 2): a row counts as touched where any of its elements is
    grads = [torch.randn(6, 3, dtype=DT, generator=gen).to_sparse() for _ in range(4)]
    whole, _ = _steps(LazyAdam, [lambda p, g=g: g for g in grads])
    p, opt = _steps(LazyAdam, [lambda p, g=g: g for g in grads[:2]])
    p = torch.nn.Parameter(p.clone())
    again = LazyAdam([p], lr=0.05)
    again.load_state_dict(opt.state_dict())
    for g in grads[2:]:
        p.grad = g.clone()
        again.step()
    torch.testing.assert_close(p.detach(), whole, rtol=1e-12, atol=1e-14)


def test_distinct_is_unique_with_inverse():
    idx = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0))
    uniq, inv = distinct(idx, 60)
    ref_u, ref_inv = torch.unique(idx, return_inverse=True)
    assert torch.equal(uniq, ref_u) and torch.equal(inv, ref_inv) and torch.equal(uniq[inv], idx)


# -- the score path -----------------------------------------------------------------------------
def _table_grad(sparse, path, shared, alpha, score_fn):
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(40, 4, dtype=DT, generator=gen, requires_grad=True)
    u = torch.randn(6, 4, dtype=DT, generator=gen, requires_grad=True)
    pos = torch.randint(0, 40, (6,), generator=gen)
    neg = torch.randint(0, 40, (5,), generator=gen).expand(6, 5) if shared else torch.randint(0, 40, (6, 5), generator=gen)
    s = batch_scores(u, table, pos, neg, score_fn, path, alpha, sparse=sparse)
    w = torch.randn(6, 5, dtype=DT, generator=gen)
    (s.pos.sin().sum() + (s.neg * w).sum()).backward()
    grad = table.grad.to_dense() if table.grad.is_sparse else table.grad
    return s, grad, u.grad, table.grad.is_sparse


@pytest.mark.parametrize("score_fn", ["cosine", "dot"])
@pytest.mark.parametrize("alpha", [None, 0.5])
@pytest.mark.parametrize("path,shared", [("gather", False), ("full", False), ("gather", True)])
def test_sparse_score_path_equals_the_dense_one(path, shared, alpha, score_fn):
    s1, g1, gu1, _ = _table_grad(False, path, shared, alpha, score_fn)
    s2, g2, gu2, is_sparse = _table_grad(True, path, shared, alpha, score_fn)
    torch.testing.assert_close(s2.pos, s1.pos)
    torch.testing.assert_close(s2.neg, s1.neg)
    if alpha is not None:
        torch.testing.assert_close(s2.affinity, s1.affinity)
    torch.testing.assert_close(g2, g1)
    torch.testing.assert_close(gu2, gu1)
    # the full path multiplies by the whole table: its gradient stays dense
    assert is_sparse == (path != "full" or shared)


# -- the model and trainer ----------------------------------------------------------------------
BASE = {**FAST, "epochs": 2, "neg_num": 32, "train_batch_size": 512, "embedding_size": 8, "eval_step": 1}


def _make(slice_root, tmp_path, model="BPR", **kw):
    cfg = Config(model, "ml-slice", config_dict={**BASE, "data_path": str(slice_root), "checkpoint_dir": str(tmp_path),
                                                 **kw}, cmd_args=[])
    init_seed(cfg["seed"], True)
    data = data_preparation(cfg, create_dataset(cfg))
    net = get_model(model)(cfg, data[0]._dataset).to(cfg["device"])
    return cfg, net, data


def _one_batch_grads(slice_root, tmp_path, loss, sampler, sparse):
    extra = {"train_batch_mode": "user"} if loss == "BSL" else {}
    cfg, net, data = _make(slice_root, tmp_path, rec_loss=loss, neg_sampler=sampler, sparse_update=sparse, **extra)
    batch = next(iter(data[0]))
    init_seed(7, True)
    out = net.calculate_loss(batch)
    loss_value = sum(out) if isinstance(out, tuple) else out
    loss_value.backward()
    grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in net.named_parameters()
             if p.grad is not None}
    kinds = {n: p.grad.is_sparse for n, p in net.named_parameters() if p.grad is not None}
    return float(loss_value.detach()), grads, kinds


@pytest.mark.parametrize("sampler", SAMPLERS.names())
@pytest.mark.parametrize("loss", [n for n in LOSSES.names()])
def test_model_gradients_with_sparse_update_equal_the_dense_ones(loss, sampler, slice_root, tmp_path):
    if SAMPLERS.get(sampler).exhaustive and not LOSSES.get(loss).supports_all:
        pytest.skip(f"{loss} is not served by {sampler}")
    torch.set_num_threads(1)
    l1, g1, _ = _one_batch_grads(slice_root, tmp_path, loss, sampler, False)
    l2, g2, kinds = _one_batch_grads(slice_root, tmp_path, loss, sampler, True)
    assert math.isclose(l1, l2, rel_tol=1e-5), (l1, l2)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6)
    # the users' rows are always looked up; the items' whenever no whole-table product is taken
    assert kinds["user_embedding.weight"]
    if not SAMPLERS.get(sampler).exhaustive and loss != "BSL":
        net_path = "sparse" if kinds["item_embedding.weight"] else "dense"
        assert net_path == "sparse" or sampler in ("uniform", "popularity"), (sampler, net_path)


def _fit(slice_root, tmp_path, sparse):
    cfg, net, data = _make(slice_root, tmp_path, rec_loss="SL", neg_sampler="shared", neg_num=64, sparse_update=sparse,
                           learning_rate=0.01, epochs=10, eval_step=10)
    trainer = get_trainer(cfg["MODEL_TYPE"], cfg["model"])(cfg, net)
    before = net.item_embedding.weight.detach().clone()
    trainer.fit(data[0], data[1], saved=True, show_progress=False)
    result = trainer.evaluate(data[2], load_best_model=True, show_progress=False)
    for v in result.values():
        assert math.isfinite(v) and 0.0 <= v <= 1.0, result
    assert not torch.equal(before, net.item_embedding.weight.detach())
    return trainer, result


def test_a_sparse_update_run_trains_like_the_dense_one_and_its_checkpoint_loads(slice_root, tmp_path):
    torch.set_num_threads(1)
    trainer, result = _fit(slice_root, tmp_path / "sparse", True)
    assert isinstance(trainer.optimizer, LazyAdam)
    _, dense = _fit(slice_root, tmp_path / "dense", False)
    # 10 epochs of 7 batches: the dense run scores about 0.064, an untrained model about 0.01
    assert result["ndcg@20"] > 0.04 and result["ndcg@20"] >= 0.8 * dense["ndcg@20"], (result, dense)
    state = load_checkpoint(trainer.saved_model_file)
    assert set(state["optimizer"]["state"]) and all(
        s["exp_avg"].layout == torch.strided for s in state["optimizer"]["state"].values())


def test_sgd_keeps_torch_sgd(slice_root, tmp_path):
    cfg, net, _ = _make(slice_root, tmp_path, rec_loss="SL", sparse_update=True, learner="sgd")
    assert type(get_trainer(cfg["MODEL_TYPE"], cfg["model"])(cfg, net).optimizer) is torch.optim.SGD


@pytest.mark.parametrize("kw,key", [
    ({"learner": "adagrad"}, "learner"),
    ({"clip_grad_norm": {"max_norm": 5}}, "clip_grad_norm"),
    ({"nproc": 2}, "sparse_update"),
    ({"sparse_update": "yes"}, "sparse_update"),
])
def test_settings_sparse_update_cannot_serve_are_refused(kw, key, slice_root):
    with pytest.raises(ConfigError) as e:
        Config("BPR", "ml-slice", config_dict={**BASE, "data_path": str(slice_root), "rec_loss": "SL",
                                               "sparse_update": True, **kw}, cmd_args=[])
    assert e.value.key == key


@pytest.mark.parametrize("model", ["LightGCN", "MultiVAE", "NeuMF", "SimpleX"])
def test_models_without_row_lookups_are_refused(model, slice_root):
    with pytest.raises(ConfigError) as e:
        Config(model, "ml-slice", config_dict={**BASE, "data_path": str(slice_root), "rec_loss": "SL",
                                               "sparse_update": True}, cmd_args=[])
    assert e.value.key == "sparse_update" and "BPR" in str(e.value)
