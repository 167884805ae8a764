import pytest
import torch
import torch.nn.functional as F

from recbole_dsl.errors import ConfigError
from recbole_dsl.scoring import all_item_scores, batch_scores, choose_score_path, pair_scores


def inputs(seed=0, B=6, n=20, N=7, d=5):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(1, n, (B,), generator=g)
    neg = torch.randint(1, n, (B, N), generator=g)
    return u, items, pos, neg


@pytest.mark.parametrize("score_fn", ["cosine", "dot"])
def test_full_and_gather_paths_agree_in_value_and_gradient(score_fn):
    u, items, pos, neg = inputs()
    out = {}
    for path in ("full", "gather"):
        r = batch_scores(u, items, pos, neg, score_fn, path, affinity_alpha=0.0)
        p, n, sim = r.pos, r.neg, r.affinity
        (p.sum() * 0.7 + (n * torch.arange(n.shape[1], dtype=n.dtype)).sum()).backward()
        out[path] = (p.detach(), n.detach(), sim, u.grad.clone(), items.grad.clone())
        u.grad = items.grad = None
    for a, b in zip(out["full"], out["gather"]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("score_fn", ["cosine", "dot"])
def test_scores_match_a_loop(score_fn):
    u, items, pos, neg = inputs(1)
    r = batch_scores(u, items, pos, neg, score_fn, "full", affinity_alpha=0.0)  # alpha 0: the similarity
    p, n, sim = r.pos, r.neg, r.affinity
    f = (lambda a, b: F.cosine_similarity(a, b, dim=0)) if score_fn == "cosine" else (lambda a, b: a @ b)
    for b in range(u.shape[0]):
        assert torch.isclose(p[b], f(u[b], items[pos[b]]))
        for j in range(neg.shape[1]):
            assert torch.isclose(n[b, j], f(u[b], items[neg[b, j]]))
            assert torch.isclose(sim[b, j], F.cosine_similarity(items[pos[b]], items[neg[b, j]], dim=0))
    assert not sim.requires_grad


def test_evaluation_scores_use_the_training_score_function():
    u, items, pos, neg = inputs(2)
    r = batch_scores(u, items, pos, neg, "cosine", "full")
    p, n = r.pos, r.neg
    assert r.affinity is None  # not asked for
    full = all_item_scores(u, items, "cosine")
    torch.testing.assert_close(full.gather(1, neg), n)
    torch.testing.assert_close(pair_scores(u, items[pos], "cosine"), p)
    assert full.abs().max() <= 1 + 1e-9


def test_score_path_choice_and_bad_path():
    assert choose_score_path("auto", n_items=1683, num_neg=1000) == "full"
    assert choose_score_path("auto", n_items=10**6, num_neg=1) == "gather"
    assert choose_score_path("gather", n_items=10, num_neg=1000) == "gather"
    u, items, pos, neg = inputs()
    with pytest.raises(ConfigError, match="score_path='fast'"):
        batch_scores(u, items, pos, neg, "dot", "fast")


@pytest.mark.parametrize("score_fn", ["cosine", "dot"])
@pytest.mark.parametrize("path", ["full", "gather", "shared"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mixed_affinity_equals_the_mix_of_scores_and_similarity(score_fn, path, alpha):
    # DSL's a = alpha * s_n + (1 - alpha) * cos(p, n): for cosine scores the path makes it with one
    # product of a mixed query; it must equal the mix of the two separate blocks on every path.
    u, items, pos, neg = inputs(3)
    if path == "shared":
        neg = neg[0].expand_as(neg)
    run = "full" if path == "shared" else path
    r = batch_scores(u, items, pos, neg, score_fn, run, affinity_alpha=0.0)
    n, sim = r.neg, r.affinity
    r2 = batch_scores(u, items, pos, neg, score_fn, run, affinity_alpha=alpha)
    n2, a = r2.neg, r2.affinity
    torch.testing.assert_close(n2, n)
    torch.testing.assert_close(a, alpha * n.detach() + (1 - alpha) * sim)
    assert not a.requires_grad


def test_full_path_product_gradient_float64():
    # the full path's product lives in a reused buffer with a hand-written backward
    from recbole_dsl.scoring import gather_all_scores

    u, items, _, neg = inputs(4)
    assert torch.autograd.gradcheck(lambda a, b: gather_all_scores(a, b, neg), (u, items))
    # a smaller batch after a larger one reuses the start of the buffer
    small = neg[:2]
    torch.testing.assert_close(gather_all_scores(u[:2], items, small), (u[:2] @ items.t()).gather(1, small))


def test_two_full_path_products_in_one_graph_share_the_buffer_safely():
    # DSL's similarity block and any second scoring call reuse the same workspace buffer before
    # the first call's backward: values and gradients must still be those of plain autograd.
    from recbole_dsl.scoring import gather_all_scores

    u, items, _, neg = inputs(5)
    v = torch.randn_like(u, requires_grad=True)
    out = (gather_all_scores(u, items, neg) * 2 + gather_all_scores(v, items, neg.flip(1)) ** 2).sum()
    out.backward()
    got = (u.grad.clone(), v.grad.clone(), items.grad.clone())
    u.grad = v.grad = items.grad = None
    ref = ((u @ items.t()).gather(1, neg) * 2 + (v @ items.t()).gather(1, neg.flip(1)) ** 2).sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    for g, r in zip(got, (u.grad, v.grad, items.grad)):
        torch.testing.assert_close(g, r)


def test_workspace_buffers_are_freed_for_evaluation():
    from recbole_dsl.scoring import gather_all_scores
    from recbole_dsl.workspace import _WORKSPACES, clear_workspaces

    u, items, _, neg = inputs(6)
    gather_all_scores(u, items, neg)
    assert _WORKSPACES  # a buffer now lives between batches
    clear_workspaces()
    assert not _WORKSPACES
