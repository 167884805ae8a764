"""Tests of the SL@K loss (recbole_dsl/losses/slk.py)."""
import math
from pathlib import Path

import pytest
import torch
import yaml

import recbole_dsl.losses.slk  # noqa: F401  (registers SLK even before the package discovers it)
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses.base import LOSSES, LossContext
from recbole_dsl.losses.sl import sl_loss
from recbole_dsl.losses.slk import QUANTILES, SLKLoss, slk_loss, slk_quantile, slk_weight

import helpers
from helpers import variable_mask


def scores(**kw):
    return helpers.scores(**{"B": 6, "N": 9, **kw})

YAML = Path(__file__).resolve().parents[1] / "properties" / "loss" / "SLK.yaml"
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def ctx_with(n_items=None, **kw):
    """A LossContext with n_items set by attribute assignment (works whether or not the dataclass
    declares the field)."""
    ctx = LossContext(**kw)
    object.__setattr__(ctx, "n_items", n_items)
    return ctx


# --- slow, obviously-correct reference (Python floats, float64) -------------------------------


def ref_beta(p, negs, k, n_items, quantile):
    cand = sorted([p] + list(negs), reverse=True)  # descending
    m = len(cand)
    r = k * m / n_items if quantile == "catalogue" and n_items is not None else float(k)
    r = min(max(r, 1.0), float(m))
    lo = int(math.floor(r))
    frac = r - lo
    beta = cand[lo - 1]
    if frac > 0:
        beta = beta + frac * (cand[lo] - cand[lo - 1])
    return beta


def ref_slk(pos, neg, tau, k, tau_w, n_items=None, quantile="sample", mask=None):
    out = []
    for b in range(len(pos)):
        negs = [neg[b][j] for j in range(len(neg[b])) if mask is None or mask[b][j]]
        if not negs:
            out.append(0.0)
            continue
        p = pos[b]
        beta = ref_beta(p, negs, k, n_items, quantile)
        w = 1.0 / (1.0 + math.exp(-(p - beta) / tau_w))
        logits = [(s - p) / tau for s in negs]
        top = max(logits)
        sl = top + math.log(sum(math.exp(x - top) for x in logits))
        out.append(w * sl)
    return out


def check_ref(got, ref, dtype):
    assert got.dtype == dtype and got.shape == (len(ref),)
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), **TOL[dtype])


# (quantile, n_items): the sample estimate; the catalogue one with fractional ranks (n_items 25
# gives r = 3 * 10 / 25 = 1.2 for N = 9), with ranks clamped to 1 (a big catalogue) and above K
# (a catalogue smaller than the candidates), and without a known catalogue size (falls back).
SCOPES = [("sample", None), ("sample", 500), ("catalogue", 25), ("catalogue", 7), ("catalogue", 10_000),
          ("catalogue", None)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("k", [1, 3, 12])  # 12 > N + 1 = 10: beta is the row's smallest score
@pytest.mark.parametrize("taus", [(0.1, 1.0), (0.5, 0.05)])
def test_reference(dtype, scope, k, taus):
    quantile, n_items = scope
    tau, tau_w = taus
    pos, neg = scores(dtype=dtype)
    got = slk_loss(pos, neg, tau, k, tau_w, n_items, quantile)
    check_ref(got, ref_slk(pos.double().tolist(), neg.double().tolist(), tau, k, tau_w, n_items, quantile), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("detach", [False, True])
def test_module_matches_reference_with_mask(dtype, scope, detach):
    quantile, n_items = scope
    pos, neg = scores(B=8, N=11, dtype=dtype, seed=4)
    mask = variable_mask(8, 11)
    mask[5] = False  # a row without a valid negative: 0, and left out of the mean
    loss = SLKLoss(tau=0.2, k=3, tau_w=0.5, quantile=quantile, detach_weight=detach)
    out = loss(pos, neg, ctx_with(n_items, neg_mask=mask))
    ref = ref_slk(pos.double().tolist(), neg.double().tolist(), 0.2, 3, 0.5, n_items, quantile, mask.tolist())
    assert ref[5] == 0.0
    torch.testing.assert_close(out.double(), torch.tensor(sum(ref) / 7, dtype=torch.float64), **TOL[dtype])


def test_quantile_reference_and_no_gradient():
    pos, neg = scores(B=7, N=12, grad=True, seed=5)
    mask = variable_mask(7, 12, seed=6)
    for quantile, n_items in SCOPES:
        for k in (1, 2, 5, 20):
            beta = slk_quantile(pos, neg, k, n_items, quantile, mask)
            assert not beta.requires_grad
            ref = [ref_beta(pos[b].item(), [neg[b, j].item() for j in range(12) if mask[b, j]], k, n_items, quantile)
                   for b in range(7)]
            torch.testing.assert_close(beta, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)


# --- identities -------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_is_sl_weighted_by_the_sigmoid_of_the_gap_to_the_quantile(scope):
    """l_b = sigmoid((s_p - beta_b) / tau_w) * SL_b exactly, with beta_b the quantile estimate."""
    quantile, n_items = scope
    pos, neg = scores(B=8, N=10, seed=2)
    beta = slk_quantile(pos, neg, 4, n_items, quantile)
    w = torch.sigmoid((pos - beta) / 0.3)
    torch.testing.assert_close(slk_loss(pos, neg, 0.15, 4, 0.3, n_items, quantile), w * sl_loss(pos, neg, 0.15),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("tau", [0.005, 0.1, 1.0])
def test_infinite_weight_temperature_is_half_sl(scope, tau):
    """tau_w -> inf: every weight -> sigmoid(0) = 1/2, so SL@K -> SL / 2 (values and gradients)."""
    quantile, n_items = scope
    pos, neg = scores(B=6, N=9, grad=True, seed=3)
    got = slk_loss(pos, neg, tau, 3, 1e12, n_items, quantile)
    ref = sl_loss(pos, neg, tau) / 2
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    g = torch.autograd.grad(got.sum(), (pos, neg))
    r = torch.autograd.grad(ref.sum(), (pos, neg))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_zero_weight_temperature_is_sl_truncated_to_the_top_k():
    """tau_w -> 0: the weight becomes the step I(s_p > beta) (1/2 at s_p == beta): SL on the rows
    whose positive is above the top-K threshold, 0 below it."""
    pos, neg = scores(B=40, N=9, seed=7)
    k = 3
    beta = slk_quantile(pos, neg, k)
    sl = sl_loss(pos, neg, 0.2)
    step = torch.where(pos > beta, 1.0, torch.where(pos == beta, 0.5, 0.0)).double()
    got = slk_loss(pos, neg, 0.2, k, 1e-12)
    torch.testing.assert_close(got, step * sl, rtol=0, atol=1e-12)
    # the rank of the positive among its candidates decides: in the top K (K-th included) or not
    rank = 1 + (neg > pos.unsqueeze(1)).sum(1)
    assert torch.equal(got != 0, rank <= k)
    assert (rank < k).any() and (rank == k).any() and (rank > k).any()  # all three cases were seen


def test_k_at_least_the_candidates_gives_plain_sl_at_zero_weight_temperature():
    """K >= M (positive + negatives): beta is the row's smallest candidate, every weight is >= 1/2,
    and with tau_w -> 0 SL@K is plain SL on every row whose positive beats a negative (SL / 2 on a
    row whose positive is its lowest score)."""
    pos, neg = scores(B=30, N=5, seed=8)
    for k in (6, 50):
        beta = slk_quantile(pos, neg, k)
        torch.testing.assert_close(beta, torch.minimum(pos, neg.amin(1)), rtol=0, atol=0)
        assert (slk_weight(pos, beta, 0.7) >= 0.5).all()
        lowest = pos < neg.amin(1)
        assert lowest.any() and (~lowest).any()
        sl = sl_loss(pos, neg, 0.1)
        torch.testing.assert_close(slk_loss(pos, neg, 0.1, k, 1e-12), torch.where(lowest, sl / 2, sl),
                                   rtol=0, atol=1e-12)


def test_k_one_uses_the_row_maximum():
    pos, neg = scores(B=10, N=6, seed=9)
    beta = slk_quantile(pos, neg, 1)
    torch.testing.assert_close(beta, torch.maximum(pos, neg.amax(1)), rtol=0, atol=0)
    assert (slk_weight(pos, beta, 0.5) <= 0.5).all()


def test_catalogue_scope_reduces_to_sample_scope():
    """catalogue with n_items = M (the candidates are the catalogue) or with n_items unknown is the
    sample estimate; a catalogue much larger than K * M clamps the rank to 1 (the row maximum)."""
    pos, neg = scores(B=6, N=9, seed=10)
    sample = slk_loss(pos, neg, 0.2, 4, 0.5, None, "sample")
    torch.testing.assert_close(slk_loss(pos, neg, 0.2, 4, 0.5, 10, "catalogue"), sample, rtol=0, atol=0)
    torch.testing.assert_close(slk_loss(pos, neg, 0.2, 4, 0.5, None, "catalogue"), sample, rtol=0, atol=0)
    torch.testing.assert_close(slk_quantile(pos, neg, 4, 10**6, "catalogue"), slk_quantile(pos, neg, 1),
                               rtol=0, atol=0)
    # the sample estimate ignores n_items
    torch.testing.assert_close(slk_loss(pos, neg, 0.2, 4, 0.5, 77, "sample"), sample, rtol=0, atol=0)


def test_module_reads_n_items_from_the_context():
    pos, neg = scores(B=6, N=9, seed=11)
    cat = SLKLoss(tau=0.2, k=5, tau_w=0.5, quantile="catalogue")
    for n_items in (None, 12, 40, 3000):
        torch.testing.assert_close(cat(pos, neg, ctx_with(n_items)),
                                   slk_loss(pos, neg, 0.2, 5, 0.5, n_items, "catalogue").mean(), rtol=0, atol=0)
    assert not torch.allclose(cat(pos, neg, ctx_with(12)), cat(pos, neg, ctx_with(3000)))
    torch.testing.assert_close(cat(pos, neg, ctx_with(None)), SLKLoss(0.2, 5, 0.5)(pos, neg), rtol=0, atol=0)
    torch.testing.assert_close(cat(pos, neg, LossContext()), SLKLoss(0.2, 5, 0.5)(pos, neg), rtol=0, atol=0)


@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_invariant_to_a_per_row_score_shift(scope):
    """SL depends on score differences and beta moves with the scores: adding c_b to a row's
    scores changes nothing."""
    quantile, n_items = scope
    pos, neg = scores(B=6, N=9, seed=12)
    c = torch.linspace(-0.7, 0.9, 6, dtype=torch.float64)
    torch.testing.assert_close(slk_loss(pos + c, neg + c.unsqueeze(1), 0.2, 3, 0.4, n_items, quantile),
                               slk_loss(pos, neg, 0.2, 3, 0.4, n_items, quantile), rtol=1e-12, atol=1e-12)


def test_detached_weight_gradient_is_weighted_sl_gradient():
    pos, neg = scores(B=6, N=9, grad=True, seed=13)
    w = torch.sigmoid((pos.detach() - slk_quantile(pos, neg, 3)) / 0.4)
    got = torch.autograd.grad(slk_loss(pos, neg, 0.2, 3, 0.4, detach_weight=True).sum(), (pos, neg))
    ref = torch.autograd.grad((w * sl_loss(pos, neg, 0.2)).sum(), (pos, neg))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the live weight adds sigma'(x) / tau_w * SL_b on the positive (pushes its score down)
    live = torch.autograd.grad(slk_loss(pos, neg, 0.2, 3, 0.4).sum(), pos)[0]
    extra = w * (1 - w) / 0.4 * sl_loss(pos, neg, 0.2).detach()
    torch.testing.assert_close(live, got[0] + extra, rtol=1e-12, atol=1e-12)


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("detach", [False, True])
def test_masked_negatives_are_removed_negatives(dtype, scope, detach):
    """The masked loss equals, row by row, the loss on the row's valid columns only (values and
    gradients), and masked negatives get no gradient."""
    quantile, n_items = scope
    loss = SLKLoss(tau=0.2, k=3, tau_w=0.3, quantile=quantile, detach_weight=detach)
    pos, neg = scores(B=7, N=10, dtype=dtype, seed=14, grad=True)
    mask = variable_mask(7, 10, seed=15)
    out = loss(pos, neg, ctx_with(n_items, neg_mask=mask))
    gp, gn = torch.autograd.grad(out, (pos, neg))

    pos_r = pos.detach().clone().requires_grad_(True)
    neg_r = neg.detach().clone().requires_grad_(True)
    ref = torch.stack([loss(pos_r[b:b + 1], neg_r[b:b + 1, mask[b]], ctx_with(n_items)) for b in range(7)]).mean()
    rp, rn = torch.autograd.grad(ref, (pos_r, neg_r))
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(gp, rp, **TOL[dtype])
    torch.testing.assert_close(gn, rn, **TOL[dtype])
    assert torch.all(gn[~mask] == 0)


@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_masked_values_do_not_matter(scope):
    quantile, n_items = scope
    pos, neg = scores(B=7, N=10, seed=16)
    mask = variable_mask(7, 10, seed=17)
    a = slk_loss(pos, neg, 0.2, 2, 0.5, n_items, quantile, neg_mask=mask)
    for fill in (1e4, -1e4, float("inf"), float("nan")):
        neg2 = neg.clone()
        neg2[~mask] = fill
        b = slk_loss(pos, neg2, 0.2, 2, 0.5, n_items, quantile, neg_mask=mask)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_all_valid_mask_is_no_mask():
    pos, neg = scores()
    for quantile, n_items in SCOPES:
        torch.testing.assert_close(
            slk_loss(pos, neg, 0.2, 3, 0.5, n_items, quantile, neg_mask=torch.ones_like(neg, dtype=torch.bool)),
            slk_loss(pos, neg, 0.2, 3, 0.5, n_items, quantile), rtol=0, atol=0)


def test_fully_masked_rows_contribute_nothing():
    loss = SLKLoss(tau=0.2, k=3, tau_w=0.5)
    pos, neg = scores(B=6, N=8, grad=True, seed=18)
    mask = variable_mask(6, 8, seed=19)
    mask[[1, 4]] = False
    out = loss(pos, neg, LossContext(neg_mask=mask))
    gp, gn = torch.autograd.grad(out, (pos, neg))
    assert torch.isfinite(out) and torch.isfinite(gp).all() and torch.isfinite(gn).all()
    assert gp[1] == 0 and gp[4] == 0 and torch.all(gn[[1, 4]] == 0)
    keep = torch.tensor([0, 2, 3, 5])
    ref = loss(pos[keep], neg[keep], LossContext(neg_mask=mask[keep]))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    per_row = slk_loss(pos, neg, 0.2, 3, 0.5, neg_mask=mask)
    assert per_row[1] == 0 and per_row[4] == 0
    # every row masked: 0 with a graph, zero gradients
    neg2 = neg.detach().clone().requires_grad_(True)
    out = loss(pos.detach(), neg2, LossContext(neg_mask=torch.zeros_like(mask)))
    assert out.item() == 0
    out.backward()
    assert torch.all(neg2.grad == 0)


def test_wrong_mask_or_shapes_raise():
    pos, neg = scores(B=4, N=3)
    with pytest.raises(ValueError, match="neg_mask"):
        slk_loss(pos, neg, 0.2, 3, 0.5, neg_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="neg_mask"):
        slk_loss(pos, neg, 0.2, 3, 0.5, neg_mask=torch.ones_like(neg))
    for p, n in [(torch.zeros(4, 1), torch.zeros(4, 3)), (torch.zeros(4), torch.zeros(4)),
                 (torch.zeros(4), torch.zeros(5, 3)), (torch.zeros(4), torch.zeros(4, 0))]:
        with pytest.raises(ValueError):
            slk_loss(p, n, 0.2, 3, 0.5)


# --- gradients --------------------------------------------------------------------------------


def gradcheck_batch(B=5, V=7, seed=20):
    """Rows whose top 4 candidates are fixed (not differentiated) and well above the rest, so a
    small perturbation of the differentiated scores never moves the quantile: finite differences
    see the same function as autograd with its stop-gradient beta."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.tensor([0.99, 0.97, 0.95, 0.93], dtype=torch.float64).expand(B, 4)
    pos = (torch.rand(B, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    neg = (torch.rand(B, V, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    return pos, neg, fixed


# (quantile, n_items, k): ranks 2 (sample) and 1.5 (catalogue: 2 * 12 / 16, interpolated between
# the two highest fixed scores), both inside the fixed block.
GRAD_CASES = [("sample", None, 2), ("catalogue", 16, 2), ("sample", None, 4)]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c[0]}-{c[2]}")
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(case, detach, masked):
    quantile, n_items, k = case
    pos, neg, fixed = gradcheck_batch()
    mask = None
    if masked:
        mask = torch.cat([torch.ones(5, 4, dtype=torch.bool), variable_mask(5, 7, seed=21)], dim=1)
    for t in (0.2, 0.7):
        def fn(p, n):
            return slk_loss(p, torch.cat([fixed, n], dim=1), t, k, 0.3, n_items, quantile, detach, mask)
        if detach:
            # the detached weight is a constant by design, so finite differences in s_p disagree
            # with it; the negatives' gradient is checked here, the positive's in
            # test_detached_weight_gradient_is_weighted_sl_gradient
            assert torch.autograd.gradcheck(lambda n: fn(pos.detach(), n), (neg,))
        else:
            assert torch.autograd.gradcheck(fn, (pos, neg))


def test_gradient_treats_the_quantile_as_a_constant():
    """Even where the positive itself is the K-th score (beta = s_p), the quantile carries no
    gradient: the gradient is that of the same formula with beta frozen."""
    pos, neg = scores(B=8, N=9, seed=22)
    top = neg.topk(3, dim=1).values
    pos[:3] = (top[:3, 1] + top[:3, 2]) / 2  # rows 0..2: the positive is the row's 3rd score
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    beta0 = slk_quantile(pos, neg, 3).clone()
    assert torch.equal(beta0[:3], pos[:3].detach())
    got = torch.autograd.grad(slk_loss(pos, neg, 0.2, 3, 0.4).sum(), (pos, neg))

    def frozen(p, n):
        return torch.sigmoid((p - beta0) / 0.4) * sl_loss(p, n, 0.2)

    ref = torch.autograd.grad(frozen(pos, neg).sum(), (pos, neg))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(frozen, (pos, neg))


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1e-3, 1e2])
@pytest.mark.parametrize("tau_w", [1e-3, 1e2])
@pytest.mark.parametrize("scope", [("sample", None), ("catalogue", 20)], ids=lambda s: s[0])
@pytest.mark.parametrize("masked", [False, True])
def test_finite_at_extreme_temperatures_float32(tau, tau_w, scope, masked):
    quantile, n_items = scope
    pos = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.3], requires_grad=True)
    neg = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0],
                        [-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0],
                        [0.3, 0.3, 0.3, 0.3]], requires_grad=True)
    mask = None
    if masked:
        mask = torch.ones(7, 4, dtype=torch.bool)
        mask[0, :2] = mask[3, 1:] = False
        mask[5] = False
    loss = SLKLoss(tau=tau, k=2, tau_w=tau_w, quantile=quantile)
    per_row = slk_loss(pos, neg, tau, 2, tau_w, n_items, quantile, neg_mask=mask)
    assert per_row.dtype == torch.float32 and torch.isfinite(per_row).all(), per_row
    out = loss(pos, neg, ctx_with(n_items, neg_mask=mask))
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


# --- configuration ----------------------------------------------------------------------------


def config():
    return yaml.safe_load(YAML.read_text())


def test_yaml_holds_every_key_with_the_constructor_defaults():
    cfg = config()
    assert set(SLKLoss.params.values()) <= set(cfg)
    assert cfg["score_fn"] == "cosine"
    built = SLKLoss.from_config(cfg)
    default = SLKLoss()
    for arg in SLKLoss.params:
        assert getattr(built, arg) == getattr(default, arg), arg
    assert (built.tau, built.k, built.tau_w, built.quantile, built.detach_weight) == (0.2, 20, 2.25, "sample", False)
    # one key per line, each with a "# (type) meaning" comment
    for line in YAML.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "# (" in line, line


def test_registered_and_usable_from_the_registry():
    assert LOSSES.get("SLK") is SLKLoss and SLKLoss.name == "SLK"
    loss = LOSSES.get("SLK").from_config(config())
    pos, neg = scores(grad=True)
    out = loss(pos, neg, LossContext(user=torch.tensor([0, 1, 0, 2, 1, 3])))
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert "k=20" in repr(loss) and "tau_w=2.25" in repr(loss)
    d = loss.diagnostics()
    assert set(d) == {"slk_w_mean", "slk_top_share", "slk_beta_mean"}
    assert all(torch.isfinite(v) for v in d.values())
    assert 0 <= d["slk_w_mean"] <= 1 and 0 <= d["slk_top_share"] <= 1


def test_diagnostics_ignore_rows_without_valid_negatives():
    loss = SLKLoss(tau=0.2, k=2, tau_w=1e-6)
    pos = torch.tensor([0.9, -0.9, 0.0], dtype=torch.float64)
    neg = torch.tensor([[0.1, 0.2], [0.1, 0.2], [0.5, 0.6]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    loss(pos, neg, LossContext(neg_mask=mask))
    d = loss.diagnostics()
    # row 0: positive first of 3 (weight 1); row 1: last of 3 (weight 0); row 2 left out
    assert d["slk_top_share"].item() == 0.5 and abs(d["slk_w_mean"].item() - 0.5) < 1e-12
    assert SLKLoss().diagnostics() == {}


BAD = {
    "loss_tau": [0, -0.1, 0.0, float("nan"), float("inf"), True, "0.1", None],
    "slk_k": [0, -3, 2.5, 20.0, True, "20", None],
    "slk_tau_w": [0, -1.0, float("nan"), float("inf"), False, "1", None],
    "slk_quantile": ["exact", "Sample", "", None, 1],
    "slk_detach_weight": ["yes", 1, 0, None, "False"],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD.items() for v in vs],
                         ids=lambda x: repr(x))
def test_bad_values_raise_config_error_naming_the_key(key, value):
    cfg = config()
    cfg[key] = value
    with pytest.raises(ConfigError, match=key) as e:
        SLKLoss.from_config(cfg)
    assert e.value.key == key
    arg = {v: a for a, v in SLKLoss.params.items()}[key]
    kwargs = {a: cfg[k] for a, k in SLKLoss.params.items()}
    with pytest.raises(ConfigError, match=key):
        SLKLoss.check(kwargs, neg_num=256)
    with pytest.raises(ConfigError, match=key):
        SLKLoss(**kwargs)
    assert arg in kwargs


def test_check_normalises_and_bounds_k_by_the_negatives():
    kw = SLKLoss.check(dict(tau=1, k=5, tau_w=2, quantile="sample", detach_weight=True), neg_num=4)
    assert kw == dict(tau=1.0, k=5, tau_w=2.0, quantile="sample", detach_weight=True)
    assert isinstance(kw["tau"], float) and isinstance(kw["tau_w"], float)
    with pytest.raises(ConfigError, match="slk_k") as e:
        SLKLoss.check(dict(tau=1, k=6, tau_w=2, quantile="sample", detach_weight=False), neg_num=4)
    assert "neg_num" in str(e.value)
    # the catalogue estimate rescales K: any K is fine; without neg_num nothing to bound
    SLKLoss.check(dict(tau=1, k=6, tau_w=2, quantile="catalogue", detach_weight=False), neg_num=4)
    SLKLoss.check(dict(tau=1, k=600, tau_w=2, quantile="sample", detach_weight=False))
    assert sorted(QUANTILES) == ["catalogue", "sample"]
    with pytest.raises(ConfigError, match="slk_quantile"):
        slk_quantile(*scores(), 3, None, "exact")
