"""neg_mask in every loss: a masked negative is the same as a dropped column.

References are loops over rows that call the loss on that row's valid columns only (row-separable
losses), or the same loss on a [B, N - m] tensor with the masked columns removed when every row
masks m columns (for the batch-coupled parts: BSL's grouped positives, DSL's temperature branch).
Parametrised over the `rec_loss` registry, so a new loss is tested automatically.
"""
from __future__ import annotations

import pytest
import torch

from recbole_dsl.losses import LOSSES, LossContext

from helpers import variable_mask

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# Every branch on for DSL (reweighting with item similarity, competition-aware temperature,
# slate smaller than N, weight cap), so the mask is exercised everywhere.
DSL_KW = dict(tau=0.2, kappa=2.0, alpha=0.5, slate_size=3, gamma=0.7, tau_range=3.0, max_weight=1.5)


def make_loss(name, **over):
    cls = LOSSES.get(name)
    if name == "DSL":
        return cls(**{**DSL_KW, **over})
    if name == "BSL":
        return cls(tau_neg=0.15, tau_pos=0.1, **over)
    if name == "SL":
        return cls(tau=0.2, log_q_correction=True, **over)  # the mask covers log q too
    return cls(tau=0.2 if name == "PSL" else 1.0, **over)


def batch(B=6, N=9, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(B, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    neg = (torch.rand(B, N, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    sim = (torch.rand(B, N, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    log_q = torch.log(torch.rand(B, N, generator=g, dtype=torch.float64) * 0.9 + 0.1).to(dtype)
    user = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2][:B])
    return pos, neg, sim, log_q, user


def ctx_of(loss, user=None, affinity=None, log_q=None, mask=None):
    """The context a loss gets; ``affinity`` (any [B, N] block) only where the loss asks for one."""
    wanted = loss.needs.affinity_alpha is not None
    return LossContext(user=user, neg_log_q=log_q, neg_mask=mask, neg_affinity=affinity if wanted else None)


def constant_mask(B, N, m=3, seed=2):
    """Exactly m masked negatives per row, at different positions in each row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, N, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(N, generator=g)[:m]] = False
    return mask


def row_separable(name):
    # BSL's positive side groups rows by user; DSL's temperature branch standardises over the batch.
    return name not in ("BSL", "DSL")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES.names())
def test_all_valid_mask_equals_no_mask(name, dtype):
    pos, neg, sim, log_q, user = batch(dtype=dtype)
    loss = make_loss(name)
    full = loss(pos, neg, ctx_of(loss, user, sim, log_q))
    masked = loss(pos, neg, ctx_of(loss, user, sim, log_q, torch.ones_like(neg, dtype=torch.bool)))
    torch.testing.assert_close(masked, full, **TOL[dtype])


def masked_run(loss, dtype, make_mask):
    """The loss on a test batch with the mask ``make_mask(B, N)``, and its gradients with respect to
    the positive and negative scores: (pos, neg, sim, log_q, user, mask, loss, d pos, d neg)."""
    pos, neg, sim, log_q, user = batch(dtype=dtype)
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    mask = make_mask(*neg.shape)
    out = loss(pos, neg, ctx_of(loss, user, sim, log_q, mask))
    gp, gn = torch.autograd.grad(out, (pos, neg))
    return pos, neg, sim, log_q, user, mask, out, gp, gn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES.names())
def test_masked_equals_dropped_columns_in_a_row_loop(name, dtype):
    """Variable numbers of valid negatives per row; the reference calls the loss row by row on
    the valid columns only. For the batch-coupled losses the coupling is switched off here
    (BSL per row, DSL without its temperature branch) and tested below."""
    over = {"group_positives": False} if name == "BSL" else {"gamma": 0.0} if name == "DSL" else {}
    loss = make_loss(name, **over)
    pos, neg, sim, log_q, user, mask, out, gp, gn = masked_run(loss, dtype, variable_mask)

    pos_r = pos.detach().clone().requires_grad_(True)
    neg_r = neg.detach().clone().requires_grad_(True)
    rows = []
    for b in range(neg.shape[0]):
        m = mask[b]
        rows.append(loss(pos_r[b:b + 1], neg_r[b:b + 1, m],
                         ctx_of(loss, user[b:b + 1], sim[b:b + 1, m], log_q[b:b + 1, m])))
    ref = torch.stack(rows).mean()
    rp, rn = torch.autograd.grad(ref, (pos_r, neg_r))
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(gp, rp, **TOL[dtype])
    torch.testing.assert_close(gn, rn, **TOL[dtype])
    assert torch.all(gn[~mask] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES.names())
def test_masked_equals_compressed_batch(name, dtype):
    """Every row masks 3 of its 9 negatives: the masked loss (with all batch coupling on: BSL's
    grouped positives, DSL's temperatures over the batch, its slate and weight cap) equals the
    loss on the [B, 6] tensor of the remaining columns, values and gradients."""
    loss = make_loss(name)
    pos, neg, sim, log_q, user, mask, out, gp, gn = masked_run(loss, dtype, constant_mask)

    B = neg.shape[0]
    pos_r = pos.detach().clone().requires_grad_(True)
    neg_r = neg.detach().clone().requires_grad_(True)
    comp = neg_r[mask].view(B, -1)
    ref = loss(pos_r, comp, ctx_of(loss, user, sim[mask].view(B, -1), log_q[mask].view(B, -1)))
    rp, rn = torch.autograd.grad(ref, (pos_r, neg_r))
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(gp, rp, **TOL[dtype])
    torch.testing.assert_close(gn, rn, **TOL[dtype])


@pytest.mark.parametrize("intensity", ["sigmoid", "lse", "margin"])
def test_dsl_whole_slate_masked_equals_compressed_batch(intensity):
    """The temperature branch's slate = every valid negative (dsl_slate_size None), each intensity."""
    loss = make_loss("DSL", slate_size=None, max_weight=None, intensity=intensity)
    pos, neg, sim, log_q, user, mask, out, gp, gn = masked_run(loss, torch.float64, constant_mask)
    B = neg.shape[0]
    pos_r = pos.detach().clone().requires_grad_(True)
    neg_r = neg.detach().clone().requires_grad_(True)
    ref = loss(pos_r, neg_r[mask].view(B, -1), ctx_of(loss, user, sim[mask].view(B, -1)))
    rp, rn = torch.autograd.grad(ref, (pos_r, neg_r))
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    torch.testing.assert_close(gp, rp, **TOL[torch.float64])
    torch.testing.assert_close(gn, rn, **TOL[torch.float64])
    assert torch.isfinite(out) and torch.all(gn[~mask] == 0)


@pytest.mark.parametrize("name", LOSSES.names())
def test_masked_values_do_not_matter(name):
    loss = make_loss(name)
    pos, neg, sim, log_q, user = batch()
    mask = variable_mask(*neg.shape)
    a = loss(pos, neg, ctx_of(loss, user, sim, log_q, mask))
    neg2, sim2, q2 = neg.clone(), sim.clone(), log_q.clone()
    neg2[~mask], sim2[~mask], q2[~mask] = 1e4, -1e4, -1e4
    b = loss(pos, neg2, ctx_of(loss, user, sim2, q2, mask))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES.names())
def test_row_without_valid_negative_contributes_nothing(name):
    """A fully masked row: finite loss and gradients, and the loss of the batch without that row
    (the row is left out of the batch mean and, for DSL, of the batch statistics)."""
    loss = make_loss(name, **({"group_positives": False} if name == "BSL" else {}))
    pos, neg, sim, log_q, user = batch()
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    mask = variable_mask(*neg.shape)
    mask[2] = False
    out = loss(pos, neg, ctx_of(loss, user, sim, log_q, mask))
    gp, gn = torch.autograd.grad(out, (pos, neg))
    assert torch.isfinite(out) and torch.isfinite(gp).all() and torch.isfinite(gn).all()
    assert gp[2] == 0 and torch.all(gn[2] == 0)
    keep = torch.arange(neg.shape[0]) != 2
    ref = loss(pos[keep], neg[keep], ctx_of(loss, user[keep], sim[keep], log_q[keep], mask[keep]))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", LOSSES.names())
def test_all_rows_masked_gives_zero_with_a_graph(name):
    loss = make_loss(name)
    pos, neg, sim, log_q, user = batch()
    neg.requires_grad_(True)
    out = loss(pos, neg, ctx_of(loss, user, sim, log_q, torch.zeros_like(neg, dtype=torch.bool)))
    assert out.item() == 0
    out.backward()
    assert torch.all(neg.grad == 0)


def test_mask_of_wrong_shape_or_dtype_is_refused():
    loss = make_loss("SL")
    pos, neg, *_ = batch()
    with pytest.raises(ValueError, match="neg_mask"):
        loss(pos, neg, LossContext(neg_mask=torch.ones(3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="neg_mask"):
        loss(pos, neg, LossContext(neg_mask=torch.ones_like(neg)))


def test_dsl_diagnostics_ignore_masked_weights():
    loss = make_loss("DSL", max_weight=None)
    pos, neg, sim, log_q, user = batch()
    mask = variable_mask(*neg.shape)
    loss(pos, neg, ctx_of(loss, user, sim, None, mask))
    d = loss.diagnostics()
    assert d["dsl_w_min"] > 0 and torch.isfinite(d["dsl_w_median"])


def test_dsl_slate_larger_than_a_masked_batch_uses_the_valid_negatives():
    """in_batch gives N = batch size, which can be below dsl_slate_size on an epoch's last batch:
    with a mask the slate is min(K, valid negatives) of each row, as for masked entries."""
    loss = make_loss("DSL", slate_size=50)
    pos, neg, sim, _, user = batch()
    mask = torch.ones_like(neg, dtype=torch.bool)
    ref = make_loss("DSL", slate_size=None)(pos, neg, ctx_of(loss, user, sim, None, mask))
    torch.testing.assert_close(loss(pos, neg, ctx_of(loss, user, sim, None, mask)), ref)
