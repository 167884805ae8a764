"""Tests of the SL / BSL / PSL / BPR / BCE losses (DSL has its own tests)."""
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import recbole_dsl.losses.baselines  # noqa: F401
import recbole_dsl.losses.bsl  # noqa: F401
import recbole_dsl.losses.psl  # noqa: F401
import recbole_dsl.losses.sl  # noqa: F401
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses.base import LOSSES, LossContext
from recbole_dsl.losses.baselines import bce_loss, bpr_loss
from recbole_dsl.losses.bsl import bsl_loss
from recbole_dsl.losses.psl import ACTIVATIONS, psl_loss
from recbole_dsl.losses.sl import sl_loss

from helpers import scores

NAMES = LOSSES.names()
PROPS = Path(__file__).resolve().parents[1] / "properties" / "loss"
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
PSL_ACTS = ["tanh", "atan", "relu"]


def config(name):
    return yaml.safe_load((PROPS / f"{name}.yaml").read_text())


# --- slow, obviously-correct references (Python floats, float64) -----------------------------


def ref_sl(pos, neg, tau, include_positive=False, log_q=None):
    out = []
    for b in range(len(pos)):
        total = 0.0
        for j in range(len(neg[b])):
            logit = (neg[b][j] - pos[b]) / tau
            if log_q is not None:
                logit -= log_q[b][j]
            total += math.exp(logit)
        if include_positive:
            total += math.exp(0.0)
        out.append(math.log(total))
    return out


def ref_bsl(pos, neg, tau1, tau2, group=None):
    out = []
    for b in range(len(pos)):
        rows = [k for k in range(len(pos)) if group is None and k == b or group is not None and group[k] == group[b]]
        pos_lme = math.log(sum(math.exp(pos[k] / tau1) for k in rows) / len(rows))
        neg_lme = math.log(sum(math.exp(s / tau2) for s in neg[b]) / len(neg[b]))
        out.append(-pos_lme + tau2 / tau1 * neg_lme)
    return out


def ref_psl(pos, neg, tau, activation):
    sigma = {"tanh": lambda d: math.tanh(d) + 1, "atan": lambda d: math.atan(d) + 1,
             "relu": lambda d: max(d + 1, 0.0), "exp": math.exp}[activation]
    return [math.log(sum(sigma((s - pos[b]) / 2) ** (1 / tau) for s in neg[b])) for b in range(len(pos))]


def ref_bpr(pos, neg, tau):
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return [sum(-math.log(sig((pos[b] - s) / tau)) for s in neg[b]) / len(neg[b]) for b in range(len(pos))]


def ref_bce(pos, neg, tau):
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return [-math.log(sig(pos[b] / tau)) + sum(-math.log(1 - sig(s / tau)) for s in neg[b]) / len(neg[b])
            for b in range(len(pos))]


def check_ref(got, ref, dtype):
    assert got.dtype == dtype and got.shape == (len(ref),)
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), **TOL[dtype])


# --- against the references -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("include_positive", [False, True])
@pytest.mark.parametrize("with_log_q", [False, True])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_sl_reference(dtype, include_positive, with_log_q, tau):
    pos, neg = scores(dtype=dtype)
    log_q = torch.log(torch.rand(neg.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1 + 1e-3)
    lq = log_q.to(dtype) if with_log_q else None
    got = sl_loss(pos, neg, tau, include_positive, lq)
    p, n = pos.double().tolist(), neg.double().tolist()
    check_ref(got, ref_sl(p, n, tau, include_positive, lq.double().tolist() if with_log_q else None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("taus", [(0.1, 0.1), (0.2, 0.1), (0.1, 0.3)])
def test_bsl_reference(dtype, grouped, taus):
    tau1, tau2 = taus
    pos, neg = scores(B=8, dtype=dtype)
    group = torch.tensor([3, 1, 3, 7, 1, 3, 0, 7]) if grouped else None
    got = bsl_loss(pos, neg, tau1, tau2, group)
    check_ref(got, ref_bsl(pos.double().tolist(), neg.double().tolist(), tau1, tau2,
                           group.tolist() if grouped else None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", PSL_ACTS)
@pytest.mark.parametrize("tau", [0.2, 0.5])
def test_psl_reference(dtype, activation, tau):
    pos, neg = scores(dtype=dtype)
    got = psl_loss(pos, neg, tau, activation)
    check_ref(got, ref_psl(pos.double().tolist(), neg.double().tolist(), tau, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_bpr_bce_reference(dtype, tau):
    pos, neg = scores(dtype=dtype)
    p, n = pos.double().tolist(), neg.double().tolist()
    check_ref(bpr_loss(pos, neg, tau), ref_bpr(p, n, tau), dtype)
    check_ref(bce_loss(pos, neg, tau), ref_bce(p, n, tau), dtype)


# --- gradients ----------------------------------------------------------------------------------

GROUP = torch.tensor([2, 0, 2, 5, 0, 2])
PURE = {
    "SL": lambda p, n: sl_loss(p, n, 0.2),
    "SL+pos": lambda p, n: sl_loss(p, n, 0.2, include_positive=True),
    "SL+logq": lambda p, n: sl_loss(p, n, 0.2, neg_log_q=torch.linspace(-6.0, -1.0, n.numel(), dtype=n.dtype).view_as(n)),
    "BSL": lambda p, n: bsl_loss(p, n, 0.2, 0.3),
    "BSL-grouped": lambda p, n: bsl_loss(p, n, 0.2, 0.3, GROUP),
    **{f"PSL-{a}": (lambda a: lambda p, n: psl_loss(p, n, 0.2, a))(a) for a in PSL_ACTS},
    "BPR": lambda p, n: bpr_loss(p, n, 0.5),
    "BCE": lambda p, n: bce_loss(p, n, 0.5),
}


@pytest.mark.parametrize("key", sorted(PURE))
def test_gradcheck(key):
    pos, neg = scores(B=6, N=4, grad=True, seed=3)
    assert torch.autograd.gradcheck(PURE[key], (pos, neg))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(PURE))
def test_finite_at_small_tau_and_cosine_extremes(dtype, key):
    tau = 0.005
    pos = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=dtype, requires_grad=True)
    neg = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0],
                        [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=dtype, requires_grad=True)
    fns = {
        "SL": lambda p, n: sl_loss(p, n, tau),
        "SL+pos": lambda p, n: sl_loss(p, n, tau, include_positive=True),
        "SL+logq": lambda p, n: sl_loss(p, n, tau, neg_log_q=torch.full_like(n, -8.0)),
        "BSL": lambda p, n: bsl_loss(p, n, tau, tau),
        "BSL-grouped": lambda p, n: bsl_loss(p, n, tau, tau, GROUP),
        **{f"PSL-{a}": (lambda a: lambda p, n: psl_loss(p, n, tau, a))(a) for a in PSL_ACTS},
        "BPR": lambda p, n: bpr_loss(p, n, tau),
        "BCE": lambda p, n: bce_loss(p, n, tau),
    }
    loss = fns[key](pos, neg)
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


# --- identities ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.005, 0.05, 0.3])
def test_bsl_per_row_equal_taus_is_sl_minus_log_n(tau):
    pos, neg = scores(B=6, N=9)
    torch.testing.assert_close(bsl_loss(pos, neg, tau, tau), sl_loss(pos, neg, tau) - math.log(9), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tau", [0.005, 0.05, 0.25])
def test_psl_exp_is_sl_at_double_tau(tau):
    pos, neg = scores(B=6, N=9)
    torch.testing.assert_close(psl_loss(pos, neg, tau, "exp"), sl_loss(pos, neg, 2 * tau), rtol=1e-12, atol=1e-9)


def test_bsl_grouped_equals_per_row_when_users_unique():
    pos, neg = scores(B=7, N=5)
    group = torch.tensor([40, 3, 17, 0, 99, 5, 8])
    torch.testing.assert_close(bsl_loss(pos, neg, 0.1, 0.2, group), bsl_loss(pos, neg, 0.1, 0.2), rtol=0, atol=1e-12)


def test_bsl_grouped_differs_and_weights_higher_positives_more():
    # user 0 holds three positives with distinct scores, user 1 one
    pos = torch.tensor([0.9, 0.1, 0.5, -0.2], dtype=torch.float64, requires_grad=True)
    _, neg = scores(B=4, N=5)
    group = torch.tensor([0, 0, 0, 1])
    grouped = bsl_loss(pos, neg, 0.2, 0.2, group)
    per_row = bsl_loss(pos, neg, 0.2, 0.2)
    assert not torch.allclose(grouped[:3], per_row[:3])
    torch.testing.assert_close(grouped[3], per_row[3])  # the single-row user is unchanged
    # every row of a user carries the same positive term
    assert torch.allclose(grouped[:3] - (per_row[:3] + pos[:3] / 0.2), grouped[0] - (per_row[0] + pos[0] / 0.2))
    (g_grouped,) = torch.autograd.grad(grouped.sum(), pos)
    (g_row,) = torch.autograd.grad(per_row.sum(), pos)
    torch.testing.assert_close(g_row, torch.full_like(g_row, -1 / 0.2))  # per-row: equal weights
    mag = g_grouped[:3].abs()
    assert mag[0] > mag[2] > mag[1]  # scores 0.9 > 0.5 > 0.1
    # weights proportional to exp(s_p / tau1), summing to the group size
    w = torch.softmax(pos[:3].detach() / 0.2, 0) * 3
    torch.testing.assert_close(g_grouped[:3], -w / 0.2)


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_sl_include_positive_is_cross_entropy(tau):
    pos, neg = scores(B=6, N=9)
    logits = torch.cat([pos.unsqueeze(1), neg], 1) / tau
    ce = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long), reduction="none")
    torch.testing.assert_close(sl_loss(pos, neg, tau, include_positive=True), ce, rtol=1e-10, atol=1e-10)


def test_sl_uniform_log_q_is_constant_shift():
    pos, neg = scores(B=4, N=6)
    lq = torch.full_like(neg, math.log(1 / 1000))
    torch.testing.assert_close(sl_loss(pos, neg, 0.1, neg_log_q=lq), sl_loss(pos, neg, 0.1) + math.log(1000))


# --- modules ------------------------------------------------------------------------------------


def test_registry_holds_the_losses():
    assert {"SL", "BSL", "PSL", "DSL", "SLK", "BPR", "BCE"} <= set(NAMES)


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).params])
def test_config_without_a_key_takes_the_constructor_default(name):
    # A checkpoint's config saved before a key existed lacks it: the constructor's default fills it.
    cls = LOSSES.get(name)
    cfg = config(name)
    dropped = sorted(cls.params.values())[-1]
    del cfg[dropped]
    arg = next(a for a, k in cls.params.items() if k == dropped)
    assert cls.config_kwargs(cfg)[arg] == inspect.signature(cls.__init__).parameters[arg].default
    cls.from_config(cfg)


@pytest.mark.parametrize("name", NAMES)
def test_from_yaml_defaults(name):
    cfg = config(name)
    cls = LOSSES.get(name)
    assert set(cls.params.values()) <= set(cfg), f"{name}.yaml misses keys"
    loss = cls.from_config(cfg)
    assert loss.name == name
    pos, neg = scores(grad=True)
    # what the loss declared it needs from the score path (DSL: an affinity block, no gradient)
    affinity = None if loss.needs.affinity_alpha is None else torch.rand_like(neg).detach()
    out = loss(pos, neg, LossContext(user=torch.tensor([0, 1, 0, 2, 1]), neg_affinity=affinity))
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [0, -0.1, 0.0, float("nan")])
def test_bad_tau_raises(name, tau):
    cfg = config(name)
    cfg["loss_tau"] = tau
    with pytest.raises(ConfigError, match="loss_tau"):
        LOSSES.get(name).from_config(cfg)


@pytest.mark.parametrize("tau", [0, -1.0])
def test_bad_bsl_tau_pos_raises(tau):
    cfg = config("BSL")
    cfg["loss_tau_pos"] = tau
    with pytest.raises(ConfigError, match="loss_tau_pos"):
        LOSSES.get("BSL").from_config(cfg)


def test_unknown_psl_activation_raises():
    cfg = config("PSL")
    cfg["psl_activation"] = "sigmoid"
    with pytest.raises(ConfigError, match="psl_activation") as e:
        LOSSES.get("PSL").from_config(cfg)
    for a in ACTIVATIONS:
        assert a in str(e.value)
    with pytest.raises(ConfigError, match="psl_activation"):
        LOSSES.get("PSL")(0.05, "exp")  # exp is for the identity test only
    with pytest.raises(ConfigError, match="psl_activation"):
        psl_loss(*scores(), 0.05, "sigmoid")
    assert sorted(ACTIVATIONS) == ["atan", "relu", "tanh"]


BAD_SHAPES = [
    (torch.zeros(4, 1), torch.zeros(4, 3)),   # pos 2-D
    (torch.zeros(4), torch.zeros(4)),         # neg 1-D
    (torch.zeros(4), torch.zeros(5, 3)),      # batch mismatch
    (torch.zeros(4), torch.zeros(4, 3, 2)),   # neg 3-D
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shapes", range(len(BAD_SHAPES)))
def test_wrong_shapes_raise_module(name, shapes):
    loss = LOSSES.get(name).from_config(config(name))
    with pytest.raises(ValueError):
        loss(*BAD_SHAPES[shapes])


@pytest.mark.parametrize("key", sorted(PURE))
@pytest.mark.parametrize("shapes", range(len(BAD_SHAPES)))
def test_wrong_shapes_raise_pure(key, shapes):
    with pytest.raises(ValueError):
        PURE[key](*BAD_SHAPES[shapes])


def test_wrong_side_shapes_raise():
    pos, neg = scores(B=4, N=3)
    with pytest.raises(ValueError):
        sl_loss(pos, neg, 0.1, neg_log_q=torch.zeros(4, 2))
    with pytest.raises(ValueError):
        bsl_loss(pos, neg, 0.1, 0.1, group=torch.zeros(3, dtype=torch.long))


def test_sl_module_log_q_switch():
    pos, neg = scores(B=4, N=6)
    lq = torch.log(torch.rand(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.01)
    on = LOSSES.get("SL")(0.1, False, True)
    off = LOSSES.get("SL")(0.1, False, False)
    torch.testing.assert_close(on(pos, neg, LossContext(neg_log_q=lq)), sl_loss(pos, neg, 0.1, neg_log_q=lq).mean())
    torch.testing.assert_close(off(pos, neg, LossContext(neg_log_q=lq)), sl_loss(pos, neg, 0.1).mean())
    torch.testing.assert_close(on(pos, neg, LossContext()), sl_loss(pos, neg, 0.1).mean())  # no q known


def test_bsl_module_grouping_switch():
    pos, neg = scores(B=5, N=4)
    user = torch.tensor([0, 1, 0, 0, 1])
    # (tau_pos, tau_neg), the order of bsl_loss
    grouped = LOSSES.get("BSL")(0.2, 0.1, True)
    flat = LOSSES.get("BSL")(0.2, 0.1, False)
    torch.testing.assert_close(grouped(pos, neg, LossContext(user=user)), bsl_loss(pos, neg, 0.2, 0.1, user).mean())
    torch.testing.assert_close(flat(pos, neg, LossContext(user=user)), bsl_loss(pos, neg, 0.2, 0.1).mean())
    torch.testing.assert_close(grouped(pos, neg), bsl_loss(pos, neg, 0.2, 0.1).mean())  # no user ids


@pytest.mark.parametrize("activation", ["tanh", "atan", "relu", "exp"])
def test_psl_fused_backward_equals_composed_autograd(activation):
    # psl_loss's analytic backward against the same formula composed from torch ops (autograd's
    # gradient), with masked entries, a row with no valid entry, relu entries clamped below
    # d = -1 and dot-product magnitudes beyond the cosine range.
    from recbole_dsl.losses.psl import _log_sigma_over_tau

    g = torch.Generator().manual_seed(7)
    pos = (torch.randn(6, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    neg = (torch.randn(6, 9, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.rand(6, 9, generator=g) > 0.3
    mask[2] = False
    mask[0] = True
    w = torch.rand(6, generator=g, dtype=torch.float64)
    got = psl_loss(pos, neg, 0.3, activation, mask)
    (got * w).sum().backward()
    p2, n2 = pos.detach().clone().requires_grad_(True), neg.detach().clone().requires_grad_(True)
    logits = _log_sigma_over_tau(n2, p2.unsqueeze(1), 0.3, activation).masked_fill(~mask, float("-inf"))
    ref = torch.logsumexp(logits, dim=1)
    ref = torch.where(mask.any(dim=1), ref, torch.zeros_like(ref))
    (ref * w).sum().backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(neg.grad, n2.grad)
    torch.testing.assert_close(pos.grad, p2.grad)
    assert neg.grad[2].abs().sum() == 0
    if activation == "relu":
        assert bool(((neg.detach() - pos.detach()[:, None]) / 2 < -1).any())  # the clamp is exercised
