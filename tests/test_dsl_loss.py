"""DSL loss: a slow plain-Python reference, the exact identities of docs/losses.md, and validation."""
from __future__ import annotations

import math

import pytest
import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.losses import LOSSES, LossContext, ScoreNeeds
from recbole_dsl.losses.dsl import DSLLoss, dsl_loss
from recbole_dsl.scoring import mix_affinity


# ---------------------------------------------------------------------------------------------
# Reference: per row, python floats (float64), explicit loops, explicit sort, explicit statistics.
# ---------------------------------------------------------------------------------------------
def _ref_weights(sn, sim, kappa, alpha, max_weight, fn_threshold=None):
    n = len(sn)
    a = [alpha * sn[j] + (1 - alpha) * (sim[j] if sim is not None else 0.0) for j in range(n)]
    if fn_threshold is not None:  # beyond t, a negative counts as far below t as it is above
        a = [x if x <= fn_threshold else fn_threshold - (x - fn_threshold) for x in a]
    m = max(kappa * x for x in a)
    e = [math.exp(kappa * x - m) for x in a]
    tot = sum(e)
    w = [n * x / tot for x in e]
    if max_weight is not None and max(w) > max_weight:
        # find c with sum_j min(c * w_j, cap) = N by bisection (the sum is increasing in c)
        lo, hi = 0.0, 1.0
        while sum(min(hi * x, max_weight) for x in w) < n:
            hi *= 2
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if sum(min(mid * x, max_weight) for x in w) < n:
                lo = mid
            else:
                hi = mid
        w = [min(hi * x, max_weight) for x in w]
    return w


def _sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _ref_intensity(xs, measure):
    if measure == "sigmoid":
        return sum(_sigmoid(x) for x in xs) / len(xs)
    if measure == "margin":
        return sum(xs) / len(xs)
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs) / len(xs))


def _ref_temps(pos, neg, tau, slate_size, gamma, tau_range, eps, intensity="sigmoid"):
    b = len(pos)
    inten = []
    for r in range(b):
        row = sorted(neg[r], reverse=True)
        k = len(row) if slate_size is None else slate_size
        inten.append(_ref_intensity([(x - pos[r]) / tau for x in row[:k]], intensity))
    mean = sum(inten) / b
    std = math.sqrt(sum((x - mean) ** 2 for x in inten) / b)
    z = [(x - mean) / (std + eps) for x in inten]
    t = [tau * math.exp(gamma * zz) for zz in z]
    t = [min(max(x, tau / tau_range), tau * tau_range) for x in t]
    gm = math.exp(sum(math.log(x) for x in t) / b)
    return [x * tau / gm for x in t]


def ref_dsl(pos, neg, tau, item_sim=None, kappa=0.0, alpha=0.5, slate_size=None, gamma=0.0,
            tau_range=3.0, max_weight=None, eps=1e-6, intensity="sigmoid", fn_threshold=None):
    pos = [float(x) for x in pos.double().tolist()]
    neg = [[float(x) for x in row] for row in neg.double().tolist()]
    sim = None if item_sim is None else item_sim.double().tolist()
    b, n = len(neg), len(neg[0])
    temps = _ref_temps(pos, neg, tau, slate_size, gamma, tau_range, eps, intensity) if gamma != 0 else [tau] * b
    out, weights = [], []
    for r in range(b):
        w = (_ref_weights(neg[r], sim[r] if sim else None, kappa, alpha, max_weight, fn_threshold)
             if kappa != 0 else [1.0] * n)
        logits = [(neg[r][j] - pos[r]) / temps[r] + math.log(w[j]) for j in range(n)]
        m = max(logits)
        out.append(m + math.log(sum(math.exp(x - m) for x in logits)) - math.log(n))
        weights.append(w)
    return out, temps, weights


def _data(b=6, n=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    sim = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    return pos.to(dtype), neg.to(dtype), sim.to(dtype)


CASES = {
    "both": dict(kappa=2.0, alpha=0.5, gamma=0.7),
    "reweight_only": dict(kappa=3.0, alpha=0.3),
    "temperature_only": dict(gamma=0.8),
    "negative_strengths": dict(kappa=-1.5, alpha=0.6, gamma=-0.5),
    "slate": dict(kappa=2.0, alpha=0.5, gamma=1.0, slate_size=3),
    "temp_clip_binds": dict(gamma=5.0, tau_range=1.5, slate_size=2),
    "max_weight": dict(kappa=6.0, alpha=0.2, max_weight=1.5),
    "everything": dict(kappa=6.0, alpha=0.0, gamma=3.0, tau_range=1.3, max_weight=1.8, slate_size=4),
    "alpha_one": dict(kappa=4.0, alpha=1.0, gamma=0.5),
    "intensity_lse": dict(kappa=2.0, alpha=0.5, gamma=0.7, intensity="lse"),
    "intensity_lse_slate": dict(gamma=1.0, slate_size=3, intensity="lse"),
    "intensity_margin": dict(gamma=0.7, intensity="margin"),
    "intensity_margin_slate": dict(kappa=2.0, alpha=0.5, gamma=-0.8, slate_size=2, intensity="margin"),
    "false_negatives": dict(kappa=3.0, alpha=0.5, gamma=0.7, fn_threshold=0.2),
    "false_negatives_hardness_capped": dict(kappa=4.0, alpha=1.0, max_weight=1.6, fn_threshold=0.1),
    "false_negatives_similarity_only": dict(kappa=2.0, alpha=0.0, fn_threshold=-0.3),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference(case, dtype, tol):
    kw = CASES[case]
    tau = 0.3
    for seed in range(3):
        pos, neg, sim = _data(dtype=dtype, seed=seed)
        got, stats = dsl_loss(pos, neg, tau, item_sim=sim, return_stats=True, **kw)
        ref, temps, weights = ref_dsl(pos, neg, tau, item_sim=sim, **kw)
        assert got.dtype == dtype and got.shape == (6,)
        torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), rtol=tol, atol=tol)
        torch.testing.assert_close(stats["tau_b"].double(), torch.tensor(temps, dtype=torch.float64), rtol=tol, atol=tol)
        torch.testing.assert_close(stats["w"].double(), torch.tensor(weights, dtype=torch.float64), rtol=tol, atol=tol)


def test_gradcheck_both_branches():
    """The branches are stop-gradient, so the analytic gradient is that of the loss with tau_b and w
    frozen at their current values: gradcheck that function, then check dsl_loss's autograd equals it."""
    pos, neg, sim = _data(b=5, n=6, seed=3)
    kw = dict(kappa=2.0, alpha=0.5, gamma=0.9, slate_size=4, max_weight=2.0)
    tau = 0.4
    _, stats = dsl_loss(pos, neg, tau, item_sim=sim, return_stats=True, **kw)
    tau_b, log_w = stats["tau_b"], stats["w"].log()

    def frozen(p, q):
        return torch.logsumexp((q - p[:, None]) / tau_b[:, None] + log_w, dim=1) - math.log(q.shape[1])

    p = pos.clone().requires_grad_(True)
    q = neg.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(frozen, (p, q))
    coef = torch.randn(5, dtype=torch.float64)
    g_dsl = torch.autograd.grad((dsl_loss(p, q, tau, item_sim=sim, **kw) * coef).sum(), (p, q))
    g_frz = torch.autograd.grad((frozen(p, q) * coef).sum(), (p, q))
    for a, b in zip(g_dsl, g_frz):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_no_gradient_through_branches():
    pos, neg, sim = _data(seed=4)
    p = pos.clone().requires_grad_(True)
    q = neg.clone().requires_grad_(True)
    s = sim.clone().requires_grad_(True)
    loss, stats = dsl_loss(p, q, 0.2, item_sim=s, kappa=2.0, gamma=1.0, max_weight=2.0, return_stats=True)
    assert loss.requires_grad
    assert not stats["tau_b"].requires_grad and not stats["w"].requires_grad
    (gs,) = torch.autograd.grad(loss.sum(), (s,), allow_unused=True)
    assert gs is None  # item_sim only enters the (detached) weights


def test_identity_sl():
    pos, neg, sim = _data(seed=5)
    tau = 0.15
    sl = torch.logsumexp((neg - pos[:, None]) / tau, dim=1)
    torch.testing.assert_close(dsl_loss(pos, neg, tau), sl - math.log(neg.shape[1]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        dsl_loss(pos, neg, tau, item_sim=sim, kappa=0.0, gamma=0.0, alpha=0.2),
        sl - math.log(neg.shape[1]), rtol=1e-12, atol=1e-12,
    )


def test_identity_per_row_temperature():
    pos, neg, _ = _data(seed=6)
    loss, stats = dsl_loss(pos, neg, 0.2, gamma=1.2, slate_size=3, return_stats=True)
    tb = stats["tau_b"]
    assert not torch.allclose(tb, torch.full_like(tb, 0.2))
    sl_rows = torch.logsumexp((neg - pos[:, None]) / tb[:, None], dim=1) - math.log(neg.shape[1])
    torch.testing.assert_close(loss, sl_rows, rtol=1e-12, atol=1e-12)
    assert torch.equal(stats["w"], torch.ones_like(neg))


def test_identity_weighted_sl():
    pos, neg, sim = _data(seed=7)
    tau, kappa, alpha = 0.25, 3.0, 0.4
    loss, stats = dsl_loss(pos, neg, tau, item_sim=sim, kappa=kappa, alpha=alpha, return_stats=True)
    w = stats["w"]
    expect_w = neg.shape[1] * torch.softmax(kappa * (alpha * neg + (1 - alpha) * sim), dim=1)
    torch.testing.assert_close(w, expect_w, rtol=1e-12, atol=1e-12)
    weighted = torch.log(((neg - pos[:, None]) / tau).exp().mul(w).mean(dim=1))
    torch.testing.assert_close(loss, weighted, rtol=1e-10, atol=1e-10)
    assert torch.equal(stats["tau_b"], torch.full_like(pos, tau))


def test_identity_alpha_one_is_a_temperature_change():
    """alpha = 1, gamma = 0: weights exp(kappa * s_n) merge with the logits s_n / tau, so
    DSL = SL(tau_eff) + kappa * s_p - logsumexp_j(kappa * s_n[j]) with tau_eff = 1 / (1/tau + kappa),
    and the gradient w.r.t. neg is SL(tau_eff)'s times tau_eff / tau (same direction)."""
    pos, neg, _ = _data(seed=8)
    tau, kappa = 0.2, 3.0
    tau_eff = 1 / (1 / tau + kappa)
    q = neg.clone().requires_grad_(True)
    loss = dsl_loss(pos, q, tau, kappa=kappa, alpha=1.0)  # item_sim not needed at alpha = 1
    sl_eff = torch.logsumexp((q - pos[:, None]) / tau_eff, dim=1)
    const = kappa * pos - torch.logsumexp(kappa * neg, dim=1)
    torch.testing.assert_close(loss, sl_eff + const, rtol=1e-12, atol=1e-12)
    (g_dsl,) = torch.autograd.grad(loss.sum(), q)
    (g_sl,) = torch.autograd.grad(sl_eff.sum(), q)
    torch.testing.assert_close(g_dsl, g_sl * tau_eff / tau, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_weight", [None, 1.0, 1.2, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weights_mean_one(max_weight, dtype):
    g = torch.Generator().manual_seed(9)
    pos = torch.rand(64, generator=g, dtype=torch.float64).to(dtype)
    neg = (torch.rand(64, 50, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    sim = (torch.rand(64, 50, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    _, stats = dsl_loss(pos, neg, 0.1, item_sim=sim, kappa=8.0, alpha=0.5, max_weight=max_weight, return_stats=True)
    w = stats["w"]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(w.mean(dim=1), torch.ones(64, dtype=dtype), rtol=tol, atol=tol)
    assert (w > 0).all()
    if max_weight is not None:
        assert w.max() <= max_weight * (1 + tol)
        assert (w.max(dim=1).values > max_weight * (1 - tol)).any()  # the cap does bind here
    if max_weight == 1.0:
        torch.testing.assert_close(w, torch.ones_like(w), rtol=tol, atol=tol)


def test_weight_cap_keeps_order_and_unclipped_ratios():
    pos, neg, sim = _data(b=4, n=20, seed=10)
    _, s0 = dsl_loss(pos, neg, 0.2, item_sim=sim, kappa=5.0, return_stats=True)
    _, s1 = dsl_loss(pos, neg, 0.2, item_sim=sim, kappa=5.0, max_weight=1.5, return_stats=True)
    w0, w1 = s0["w"], s1["w"]
    free = w1 < 1.5 - 1e-9
    ratio = torch.where(free, w1 / w0, torch.nan)
    for r in range(4):  # the unclipped weights of a row are scaled by one common factor c >= 1
        vals = ratio[r][free[r]]
        torch.testing.assert_close(vals, torch.full_like(vals, vals[0].item()), rtol=1e-10, atol=0)
        assert vals[0] >= 1 - 1e-12


def test_temperatures_geometric_mean():
    pos, neg, _ = _data(b=32, n=10, seed=11)
    tau = 0.2
    # clip does not bind: tau_b = tau * exp(gamma * z) exactly, geometric mean tau
    _, st = dsl_loss(pos, neg, tau, gamma=0.3, tau_range=100.0, return_stats=True)
    tb = st["tau_b"]
    torch.testing.assert_close(tb.log().mean().exp(), torch.tensor(tau, dtype=torch.float64), rtol=1e-12, atol=0)
    inten = torch.sigmoid((neg - pos[:, None]) / tau).mean(dim=1)
    z = (inten - inten.mean()) / (inten.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(tb, tau * torch.exp(0.3 * z), rtol=1e-12, atol=0)
    # clip binds: geometric mean still tau; values within the range up to the common rescale factor
    rho = 1.2
    _, st = dsl_loss(pos, neg, tau, gamma=3.0, tau_range=rho, return_stats=True)
    tb = st["tau_b"]
    torch.testing.assert_close(tb.log().mean().exp(), torch.tensor(tau, dtype=torch.float64), rtol=1e-12, atol=0)
    clipped = torch.clamp(tau * torch.exp(3.0 * z), tau / rho, tau * rho)
    assert (clipped == tau * rho).any() or (clipped == tau / rho).any()
    factor = tau / clipped.log().mean().exp()
    torch.testing.assert_close(tb, clipped * factor, rtol=1e-12, atol=0)
    assert tb.max() / tb.min() <= rho * rho * (1 + 1e-12)


def test_single_row_batch():
    pos, neg, sim = _data(b=1, n=5, seed=12)
    loss, st = dsl_loss(pos, neg, 0.2, item_sim=sim, kappa=1.0, gamma=2.0, return_stats=True)
    torch.testing.assert_close(st["tau_b"], torch.tensor([0.2], dtype=torch.float64))
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_tiny_tau(dtype):
    b, n = 16, 32
    g = torch.Generator().manual_seed(13)
    sign = torch.randint(0, 2, (b, n), generator=g).to(dtype) * 2 - 1
    neg = sign.clone().requires_grad_(True)
    pos = (torch.randint(0, 2, (b,), generator=g).to(dtype) * 2 - 1).requires_grad_(True)
    sim = sign.flip(1)
    for kw in (dict(gamma=50.0, kappa=20.0, max_weight=2.0, tau_range=3.0),
               dict(gamma=1e4, kappa=-1e3, slate_size=3),
               dict(gamma=50.0)):
        loss = dsl_loss(pos, neg, 0.005, item_sim=sim, **kw)
        gp, gn = torch.autograd.grad(loss.mean(), (pos, neg))
        assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gn).all()


def test_item_sim_required():
    pos, neg, _ = _data(seed=14)
    with pytest.raises(ValueError, match="item_sim"):
        dsl_loss(pos, neg, 0.2, kappa=1.0, alpha=0.5)
    dsl_loss(pos, neg, 0.2, kappa=1.0, alpha=1.0)  # hardness only: fine
    dsl_loss(pos, neg, 0.2, kappa=0.0, alpha=0.5, gamma=1.0)  # reweighting off: fine


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------
def test_registered_and_params():
    assert LOSSES.get("DSL") is DSLLoss
    assert DSLLoss.name == "DSL"
    assert DSLLoss.params == {
        "tau": "loss_tau", "kappa": "dsl_kappa", "alpha": "dsl_alpha", "slate_size": "dsl_slate_size",
        "gamma": "dsl_gamma", "tau_range": "dsl_tau_range", "max_weight": "dsl_max_weight",
        "reweight": "dsl_reweight", "temperature": "dsl_temperature", "intensity": "dsl_intensity",
        "fn_threshold": "dsl_fn_threshold", "slate_source": "dsl_slate_source",
    }
    cfg = {"loss_tau": 0.2, "dsl_kappa": 2.0, "dsl_alpha": 0.5, "dsl_slate_size": None, "dsl_gamma": 0.5,
           "dsl_tau_range": 3.0, "dsl_max_weight": None, "dsl_reweight": True, "dsl_temperature": True,
           "dsl_intensity": "lse"}
    m = DSLLoss.from_config(cfg)  # cfg lacks dsl_fn_threshold (a checkpoint older than it): its default
    assert m.intensity == "lse" and m.fn_threshold is None
    assert m.tau == 0.2 and m.needs == ScoreNeeds(affinity_alpha=0.5)


def test_yaml_defaults_build_the_module():
    import pathlib
    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "properties" / "loss" / "DSL.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert set(DSLLoss.params.values()) <= set(cfg)
    assert cfg["dsl_slate_size"] is None and cfg["dsl_max_weight"] is None and cfg["score_fn"] == "cosine"
    DSLLoss.from_config(cfg)


def test_false_negative_fold_peaks_at_the_threshold():
    # One row, negatives at evenly spaced affinities: with the fold the heaviest is the one at t,
    # two negatives equally far on either side of t weigh the same, and t above every affinity
    # changes nothing.
    a = torch.linspace(-0.8, 0.8, 9, dtype=torch.float64).unsqueeze(0)
    pos = torch.zeros(1, dtype=torch.float64)
    _, st = dsl_loss(pos, a, 0.2, kappa=4.0, alpha=1.0, fn_threshold=0.4, return_stats=True)
    w = st["w"][0]
    assert int(w.argmax()) == 6  # a = 0.4
    torch.testing.assert_close(w[5], w[7])  # 0.2 and 0.6
    torch.testing.assert_close(w[4], w[8])  # 0.0 and 0.8
    assert w.mean().item() == pytest.approx(1.0)
    _, plain = dsl_loss(pos, a, 0.2, kappa=4.0, alpha=1.0, return_stats=True)
    _, high = dsl_loss(pos, a, 0.2, kappa=4.0, alpha=1.0, fn_threshold=1.0, return_stats=True)
    torch.testing.assert_close(high["w"], plain["w"])
    assert DSLLoss(fn_threshold=0.5).fn_threshold == 0.5 and DSLLoss().fn_threshold is None


@pytest.mark.parametrize("intensity", ["sigmoid", "lse", "margin"])
def test_given_slate_equals_the_slate_taken_from_the_negatives(intensity):
    # A slate handed over (the catalogue's top K, from the score path) is used as is: handing over
    # the top K of the negatives themselves gives exactly the negatives-slate loss; a -inf entry
    # (a row with fewer than K valid items) is left out of the slate.
    pos, neg, sim = _data(seed=21)
    kw = dict(kappa=2.0, alpha=0.5, gamma=0.8, intensity=intensity)
    ref, st_ref = dsl_loss(pos, neg, 0.3, item_sim=sim, slate_size=3, return_stats=True, **kw)
    top = torch.topk(neg, 3, dim=1).values
    got, st = dsl_loss(pos, neg, 0.3, item_sim=sim, slate=top, return_stats=True, **kw)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(st["tau_b"], st_ref["tau_b"])
    padded = torch.cat([torch.topk(neg, 2, dim=1).values, neg.new_full((neg.shape[0], 2), float("-inf"))], dim=1)
    short, _ = dsl_loss(pos, neg, 0.3, item_sim=sim, slate_size=2, return_stats=True, **kw)
    torch.testing.assert_close(dsl_loss(pos, neg, 0.3, item_sim=sim, slate=padded, **kw), short)
    # the module asks the score path for it, reads it from the context, and refuses to run without it
    m = DSLLoss(tau=0.3, slate_source="catalogue", slate_size=3, **kw)
    assert m.needs.catalogue_slate == 3
    ctx = LossContext(neg_affinity=mix_affinity(sim, neg, 0.5), slate=top)
    torch.testing.assert_close(m(pos, neg, ctx), ref.mean())
    with pytest.raises(ValueError, match="LossContext.slate"):
        m(pos, neg, LossContext(neg_affinity=ctx.neg_affinity))
    # a catalogue slate may be larger than neg_num; without the temperature branch nothing is asked
    assert DSLLoss.check(dict(m.check(dict(tau=0.3, kappa=1.0, alpha=0.5, slate_size=50, gamma=0.5, tau_range=3.0,
                                           max_weight=None, reweight=True, temperature=True,
                                           slate_source="catalogue"))), neg_num=8)["slate_size"] == 50
    assert DSLLoss(slate_source="catalogue", slate_size=5, temperature=False).needs.catalogue_slate is None
    assert DSLLoss(slate_source="catalogue", slate_size=5, gamma=0.0).needs.catalogue_slate is None
    with pytest.raises(ConfigError, match="dsl_slate_source: catalogue"):
        DSLLoss.check(dict(tau=0.3, kappa=1.0, alpha=0.5, slate_size=50, gamma=0.5, tau_range=3.0,
                           max_weight=None, reweight=True, temperature=True), neg_num=8)


def test_needs_are_declared_per_instance():
    assert DSLLoss(kappa=1.0, alpha=0.5).needs.affinity_alpha == 0.5
    assert DSLLoss(kappa=1.0, alpha=1.0).needs.affinity_alpha is None  # hardness only: no similarity
    assert DSLLoss(kappa=0.0, alpha=0.5).needs.affinity_alpha is None
    assert DSLLoss(kappa=1.0, alpha=0.5, reweight=False).needs.affinity_alpha is None


def test_code_defaults_are_the_yaml_defaults():
    import inspect
    import pathlib
    import yaml

    cfg = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "properties" / "loss" / "DSL.yaml").read_text())
    sig = inspect.signature(DSLLoss)
    for arg, key in DSLLoss.params.items():
        assert sig.parameters[arg].default == cfg[key], (arg, key)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8])
def test_premixed_affinity_equals_item_sim(alpha):
    # The score path may hand the loss a = alpha * s_n + (1 - alpha) * sim (LossContext.neg_affinity)
    # instead of sim: same loss, weights and temperatures.
    pos, neg, sim = _data(seed=16)
    kw = dict(kappa=2.0, alpha=alpha, gamma=0.7, slate_size=4, max_weight=2.0, tau_range=2.0)
    ref, st_ref = dsl_loss(pos, neg, 0.3, item_sim=sim, return_stats=True, **kw)
    a = alpha * neg + (1 - alpha) * sim
    got, st = dsl_loss(pos, neg, 0.3, affinity=a, return_stats=True, **kw)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(st["w"], st_ref["w"])
    m = DSLLoss(tau=0.3, **kw)
    assert m.needs.affinity_alpha == alpha
    torch.testing.assert_close(m(pos, neg, LossContext(neg_affinity=a)), ref.mean())
    torch.testing.assert_close(mix_affinity(sim, neg, alpha), a)


def test_module_matches_function_and_switches():
    pos, neg, sim = _data(seed=15)
    ctx = LossContext(neg_affinity=mix_affinity(sim, neg, 0.5))
    kw = dict(tau=0.3, kappa=2.0, alpha=0.5, gamma=0.7, slate_size=4, max_weight=2.0, tau_range=2.0)
    m = DSLLoss(**kw)
    ref = dsl_loss(pos, neg, 0.3, item_sim=sim, kappa=2.0, alpha=0.5, gamma=0.7, slate_size=4, max_weight=2.0, tau_range=2.0)
    torch.testing.assert_close(m(pos, neg, ctx), ref.mean())
    off = DSLLoss(**kw, reweight=False, temperature=False)
    torch.testing.assert_close(off.compute(pos, neg, ctx), dsl_loss(pos, neg, 0.3))
    assert off.diagnostics() == {}
    only_t = DSLLoss(**kw, reweight=False)
    torch.testing.assert_close(only_t.compute(pos, neg, LossContext()),
                               dsl_loss(pos, neg, 0.3, gamma=0.7, slate_size=4, tau_range=2.0))
    assert set(only_t.diagnostics()) == {"dsl_tau_min", "dsl_tau_median", "dsl_tau_max"}
    only_w = DSLLoss(**kw, temperature=False)
    only_w.compute(pos, neg, ctx)
    assert set(only_w.diagnostics()) == {"dsl_w_min", "dsl_w_median", "dsl_w_max"}


def test_diagnostics_after_forward():
    pos, neg, sim = _data(seed=16)
    m = DSLLoss(tau=0.2, kappa=2.0, alpha=0.5, gamma=0.5)
    assert m.diagnostics() == {}
    m(pos, neg, LossContext(neg_affinity=mix_affinity(sim, neg, 0.5)))
    d = m.diagnostics()
    assert set(d) == {"dsl_tau_min", "dsl_tau_median", "dsl_tau_max", "dsl_w_min", "dsl_w_median", "dsl_w_max"}
    for v in d.values():
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.dim() == 0 and not v.requires_grad
    assert d["dsl_tau_min"] <= d["dsl_tau_median"] <= d["dsl_tau_max"]
    assert d["dsl_w_min"] <= d["dsl_w_median"] <= d["dsl_w_max"]
    assert d["dsl_w_min"] < 1 < d["dsl_w_max"]


def test_module_requires_the_affinity_it_declared():
    pos, neg, _ = _data(seed=17)
    with pytest.raises(ValueError, match="neg_affinity"):
        DSLLoss(kappa=1.0, alpha=0.5)(pos, neg)


@pytest.mark.parametrize("key,kwargs", [
    ("loss_tau", dict(tau=0.0)),
    ("loss_tau", dict(tau=-0.1)),
    ("dsl_slate_size", dict(slate_size=-3)),
    ("dsl_slate_size", dict(slate_size=0)),
    ("dsl_slate_size", dict(slate_size=2.5)),
    ("dsl_tau_range", dict(tau_range=0.9)),
    ("dsl_max_weight", dict(max_weight=0.5)),
    ("dsl_alpha", dict(alpha=-0.1)),
    ("dsl_alpha", dict(alpha=1.5)),
    ("dsl_kappa", dict(kappa=float("nan"))),
    ("dsl_gamma", dict(gamma="big")),
    ("dsl_reweight", dict(reweight="yes")),
    ("dsl_intensity", dict(intensity="max")),
    ("dsl_intensity", dict(intensity=None)),
    ("dsl_fn_threshold", dict(fn_threshold="high")),
    ("dsl_slate_source", dict(slate_source="items")),
    ("dsl_slate_size", dict(slate_source="catalogue", slate_size=None)),
    ("dsl_fn_threshold", dict(fn_threshold=float("inf"))),
])
def test_config_errors(key, kwargs):
    with pytest.raises(ConfigError) as ei:
        DSLLoss(**kwargs)
    assert ei.value.key == key
    assert key in str(ei.value)


def test_unknown_intensity_names_the_known_ones():
    with pytest.raises(ConfigError) as ei:
        DSLLoss(intensity="max")
    assert all(m in str(ei.value) for m in ("sigmoid", "lse", "margin"))


def test_slate_size_is_checked_against_neg_num():
    base = {arg: None for arg in DSLLoss.params}
    base.update(tau=0.3, kappa=2.0, alpha=0.5, gamma=0.5, tau_range=3.0, reweight=True, temperature=True,
                intensity="sigmoid", slate_source="negatives")
    DSLLoss.check(dict(base, slate_size=10), neg_num=10)
    DSLLoss.check(dict(base, slate_size=10), neg_num=100)
    with pytest.raises(ConfigError) as ei:
        DSLLoss.check(dict(base, slate_size=10), neg_num=5)
    assert ei.value.key == "dsl_slate_size" and "neg_num=5" in str(ei.value)
    DSLLoss.check(dict(base, slate_size=None), neg_num=1)
    pos, neg, sim = _data(n=5, seed=18)
    with pytest.raises(ConfigError):  # at run time too, for a loss built from Python
        DSLLoss(slate_size=10, gamma=0.5)(pos, neg, LossContext(neg_affinity=mix_affinity(sim, neg, 0.5)))


def test_slate_keys_without_the_temperature_branch_are_reported(caplog):
    # gamma 0 is the shipped default: a slate key set on its own would do nothing, so it is named
    with caplog.at_level("WARNING", logger="recbole_dsl.losses.dsl"):
        DSLLoss()
        DSLLoss(slate_size=10, gamma=0.5)
        assert not caplog.records
        DSLLoss(slate_size=10, intensity="lse")
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "dsl_slate_size=10" in msg and "dsl_intensity='lse'" in msg and "dsl_gamma=0.0" in msg


def test_accepts_boundary_values():
    DSLLoss(tau_range=1.0, max_weight=1.0, alpha=0.0, slate_size=1, kappa=-2.0, gamma=-1.0)
    DSLLoss(alpha=1.0, reweight=False, temperature=False)


@pytest.mark.parametrize("b,n", [(6, 7), (300, 400)])
def test_diagnostics_values(b, n):
    g = torch.Generator().manual_seed(19)
    pos = torch.rand(b, generator=g) * 2 - 1
    neg = torch.rand(b, n, generator=g) * 2 - 1
    sim = torch.rand(b, n, generator=g) * 2 - 1
    m = DSLLoss(tau=0.2, kappa=3.0, alpha=0.5, gamma=0.8, max_weight=2.5)
    m(pos, neg, LossContext(neg_affinity=mix_affinity(sim, neg, 0.5)))
    d = m.diagnostics()
    _, st = dsl_loss(pos, neg, 0.2, item_sim=sim, kappa=3.0, alpha=0.5, gamma=0.8, max_weight=2.5, return_stats=True)
    w, t = st["w"], st["tau_b"]
    torch.testing.assert_close(d["dsl_w_min"], w.min(), rtol=1e-5, atol=0)
    torch.testing.assert_close(d["dsl_w_max"], w.max(), rtol=1e-5, atol=0)
    torch.testing.assert_close(d["dsl_tau_median"], t.median(), rtol=1e-5, atol=0)
    torch.testing.assert_close(d["dsl_tau_min"], t.min(), rtol=1e-5, atol=0)
    torch.testing.assert_close(d["dsl_tau_max"], t.max(), rtol=1e-5, atol=0)
    if b * n <= 1 << 16:  # exact median
        torch.testing.assert_close(d["dsl_w_median"], w.flatten().median(), rtol=1e-5, atol=0)
    else:  # strided sample: close to the exact median
        exact = w.flatten().median()
        assert abs(d["dsl_w_median"] - exact) < 0.05 * exact
