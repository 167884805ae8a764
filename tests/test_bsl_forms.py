"""BSL's three published forms (docs/losses.md, BSL): against slow loops, the identities between
them and SL, gradients, and the keys."""
import math

import pytest
import torch

from recbole_dsl import Config, ConfigError
from recbole_dsl.losses import LOSSES, LossContext
from recbole_dsl.losses.bsl import BSL_FORMS, bsl_loss
from recbole_dsl.losses.sl import sl_loss

from helpers import scores, variable_mask

GROUP = torch.tensor([0, 1, 0, 2, 1, 0, 3])


def lme(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs) / len(xs))


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref(form, pos, neg, group, mask, tau1=None, tau2=None, t1=None, t2=None):
    """Each form as written, one row at a time (plain floats)."""
    out = []
    for b in range(len(pos)):
        negs = [neg[b][j] for j in range(len(neg[b])) if mask is None or mask[b][j]]
        if not negs:
            out.append(0.0)
            continue
        same = [k for k in range(len(pos)) if group is not None and group[k] == group[b]] or [b]
        if form == "paper":  # -tau1 LME(s_p / tau1) + tau2 LME(s_n / tau2), divided by tau1
            out.append(-lme([pos[k] / tau1 for k in same]) + tau2 / tau1 * lme([x / tau2 for x in negs]))
        elif form == "pseudocode":  # Algorithms 1-2: per row
            out.append(-pos[b] / tau1 + tau1 / tau2 * lse([x / tau2 for x in negs]))
        else:  # official, mode multi: one temperature t1, negative term weighted by t2
            out.append(-lme([pos[k] / t1 for k in same]) + t2 * lme([x / t1 for x in negs]))
    return torch.tensor(out, dtype=torch.float64)


KW = {"paper": dict(tau_pos=0.15, tau_neg=0.25), "pseudocode": dict(tau_pos=0.15, tau_neg=0.25),
      "official": dict(t1=0.12, t2=1.22)}


@pytest.mark.parametrize("form", BSL_FORMS)
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_each_form_matches_its_slow_loop(form, grouped, masked):
    pos, neg = scores(B=7, N=9, seed=3)
    mask = variable_mask(7, 9) if masked else None
    loss = LOSSES.get("BSL")(form=form, group_positives=grouped, **KW[form])
    got = loss.compute(pos, neg, LossContext(user=GROUP if grouped else None, neg_mask=mask))
    group = GROUP.tolist() if grouped and form != "pseudocode" else None  # the pseudocode is per row
    m = mask.tolist() if masked else None
    kw = KW[form] if form == "official" else dict(tau1=KW[form]["tau_pos"], tau2=KW[form]["tau_neg"])
    torch.testing.assert_close(got, ref(form, pos.tolist(), neg.tolist(), group, m, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.2])
def test_paper_form_per_row_with_equal_temperatures_is_sl_minus_log_n(tau):
    pos, neg = scores(B=6, N=9)
    got = LOSSES.get("BSL")(tau, tau, False, form="paper").compute(pos, neg, LossContext())
    torch.testing.assert_close(got, sl_loss(pos, neg, tau) - math.log(9), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.2])
def test_pseudocode_form_with_equal_temperatures_is_sl(tau):
    pos, neg = scores(B=6, N=9)
    got = LOSSES.get("BSL")(tau, tau, form="pseudocode").compute(pos, neg, LossContext(user=GROUP[:6]))
    torch.testing.assert_close(got, sl_loss(pos, neg, tau), rtol=0, atol=1e-12)


@pytest.mark.parametrize("t1", [0.08, 0.2])
def test_official_form_with_t2_one_is_sl_with_pooled_positives(t1):
    pos, neg = scores(B=7, N=9)
    official = LOSSES.get("BSL")(form="official", t1=t1, t2=1.0)
    # per row: SL at temperature t1 (minus log N, the mean over the negatives)
    per_row = official.compute(pos, neg, LossContext())
    torch.testing.assert_close(per_row, sl_loss(pos, neg, t1) - math.log(9), rtol=0, atol=1e-12)
    # pooled: SL whose positive score is the user's pooled t1 * LME(s_p / t1)
    pooled_pos = torch.tensor([t1 * lme([pos[k].item() / t1 for k in range(7) if GROUP[k] == GROUP[b]])
                               for b in range(7)], dtype=torch.float64)
    torch.testing.assert_close(official.compute(pos, neg, LossContext(user=GROUP)),
                               sl_loss(pooled_pos, neg, t1) - math.log(9), rtol=0, atol=1e-12)


def test_official_and_paper_forms_meet_where_their_formulas_coincide():
    # c = tau2 / tau1 with tau1 == tau2 == t1 gives c = 1: official with t2 = 1 is paper with equal taus.
    pos, neg = scores(B=7, N=9, seed=4)
    ctx = LossContext(user=GROUP)
    torch.testing.assert_close(LOSSES.get("BSL")(form="official", t1=0.2, t2=1.0).compute(pos, neg, ctx),
                               LOSSES.get("BSL")(0.2, 0.2, form="paper").compute(pos, neg, ctx), rtol=0, atol=1e-12)
    # and t2 != 1 is what the paper's form cannot express with one temperature: it differs from every paper form
    # with tau1 = tau2 = t1.
    assert not torch.allclose(LOSSES.get("BSL")(form="official", t1=0.2, t2=1.2).compute(pos, neg, ctx),
                              LOSSES.get("BSL")(0.2, 0.2, form="paper").compute(pos, neg, ctx))


@pytest.mark.parametrize("form", BSL_FORMS)
def test_gradcheck_each_form(form):
    pos, neg = scores(B=5, N=6, grad=True, seed=7)
    mask = variable_mask(5, 6)
    loss = LOSSES.get("BSL")(form=form, **KW[form])
    ctx = LossContext(user=GROUP[:5], neg_mask=mask)
    assert torch.autograd.gradcheck(lambda p, n: loss.compute(p, n, ctx), (pos, neg))


@pytest.mark.parametrize("form", BSL_FORMS)
@pytest.mark.parametrize("tau", [1e-4, 1e4])
def test_each_form_is_finite_at_extreme_temperatures(form, tau):
    pos, neg = scores(B=5, N=6, grad=True, dtype=torch.float32)
    kw = dict(t1=tau, t2=1.2) if form == "official" else dict(tau_pos=tau, tau_neg=tau)
    out = LOSSES.get("BSL")(form=form, **kw).compute(pos, neg, LossContext(user=GROUP[:5]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_the_official_readme_settings_are_typed_as_they_are_written():
    # junkangwu/BSL README, MF on Gowalla: t1 0.08, t2 1.22
    config = Config("BPR", "ml-100k", config_dict={"rec_loss": "BSL", "bsl_form": "official", "bsl_t1": 0.08,
                                                   "bsl_t2": 1.22}, cmd_args=[])
    loss = config.plugin_settings.rec.build_loss()
    assert (loss.form, loss.t1, loss.t2) == ("official", 0.08, 1.22)
    pos, neg = scores(B=4, N=5)
    torch.testing.assert_close(loss.compute(pos, neg, LossContext()),
                               bsl_loss(pos, neg, 0.08, 0.08, weight=1.22), rtol=0, atol=0)


@pytest.mark.parametrize("key,value", [("bsl_form", "offical"), ("bsl_form", 1), ("bsl_t1", 0), ("bsl_t2", -1.0),
                                       ("bsl_t2", float("nan")), ("bsl_t1", "0.1x")])
def test_bad_form_keys_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        Config("BPR", "ml-100k", config_dict={"rec_loss": "BSL", key: value}, cmd_args=[])
    assert e.value.key == key
