import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.losses import LossContext, sl_loss
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings, TrainingNoise
from recbole_dsl.samplers import (
    SAMPLERS, FalseNegativeSampler, NegativeBatch, PositiveSet, build_sampler, is_shared, sampler_for_run,
)
from recbole_dsl.samplers.base import FIRST_ITEM, SharedItems
from recbole_dsl.samplers.popularity import alias_table
from recbole_dsl.scoring import batch_scores
from recbole_dsl.settings import PluginSettings

from helpers import plugin_defaults


def random_interactions(n_users=50, n_items=40, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_users, n_items, generator=g) < density
    mask[:, 0] = False  # padding item
    users, items = mask.nonzero(as_tuple=True)
    return users, items, mask


@pytest.fixture(params=["dense", "hashed"])
def positive_set(request, monkeypatch):
    users, items, mask = random_interactions()
    if request.param == "hashed":
        monkeypatch.setattr(PositiveSet, "max_dense_cells", 0)
    ps = PositiveSet(users, items, n_items=mask.shape[1], n_users=mask.shape[0])
    assert (ps.dense is not None) == (request.param == "dense")
    return ps, mask


def test_positive_set_membership_matches_data(positive_set):
    ps, mask = positive_set
    uu, ii = torch.meshgrid(torch.arange(mask.shape[0]), torch.arange(mask.shape[1]), indexing="ij")
    assert torch.equal(ps.contains(uu, ii), mask)


def test_positive_set_shared_membership_and_pairs(positive_set):
    # contains_cols looks the batch users' own positives up among the N shared items: every
    # occurrence of a repeated item is found, and rows of a repeated user agree.
    ps, mask = positive_set
    g = torch.Generator().manual_seed(1)
    user = torch.randint(0, mask.shape[0], (17,), generator=g)
    items = torch.randint(0, mask.shape[1], (60,), generator=g)  # with repeats
    assert torch.equal(ps.contains_cols(user, items), mask[user.unsqueeze(1), items.unsqueeze(0)])
    row, item = ps.pairs_of(user)
    got = torch.zeros(user.shape[0], mask.shape[1], dtype=torch.bool)
    got[row, item] = True
    assert torch.equal(got, mask[user]) and row.numel() == int(mask[user].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_items_positions_match_a_loop(seed):
    # every (row, item) pair is found at every position its item holds among the N (repeats
    # included), pairs whose item is not among them give nothing, and nothing else is returned
    g = torch.Generator().manual_seed(seed)
    n_items = 30
    items = torch.randint(0, n_items, (25,), generator=g)
    row = torch.randint(0, 7, (40,), generator=g)
    item = torch.randint(0, n_items, (40,), generator=g)
    got = set(zip(*(t.tolist() for t in SharedItems(items, n_items).positions(row, item))))
    want = {(r, j) for r, i in zip(row.tolist(), item.tolist()) for j, v in enumerate(items.tolist()) if v == i}
    assert got == want
    empty = SharedItems(items, n_items).positions(row[:0], item[:0])
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_pairs_of_users_without_positives(monkeypatch):
    # users 1, 3 and 4 (the last ones included) have no training pair
    monkeypatch.setattr(PositiveSet, "max_dense_cells", 0)
    ps = PositiveSet(torch.tensor([0, 0, 2]), torch.tensor([3, 1, 5]), n_items=7, n_users=5)
    row, item = ps.pairs_of(torch.tensor([4, 0, 3, 2, 1, 0]))
    assert sorted(zip(row.tolist(), item.tolist())) == [(1, 1), (1, 3), (3, 5), (5, 1), (5, 3)]
    assert torch.equal(ps.contains_cols(torch.tensor([4, 2]), torch.tensor([5, 5, 1])),
                       torch.tensor([[False, False, False], [True, True, False]]))


def counts_of(n_items, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(1, 50, (n_items,), generator=g)
    c[0] = 0
    return c


def make(name, n_items=40, num=7, positives=None, **kw):
    counts = counts_of(n_items) if SAMPLERS.get(name).needs_item_counts else None
    return build_sampler(name, n_items=n_items, num=num, positives=positives, item_counts=counts, **kw)


def valid_items(nb: NegativeBatch):
    """The [B, N] negatives with masked entries set to -1."""
    return nb.items if nb.mask is None else torch.where(nb.mask, nb.items, torch.full_like(nb.items, -1))


# Samplers that draw negatives; `all` (exhaustive) describes them by what it excludes instead.
DRAWING = [n for n, c in SAMPLERS.items() if not c.exhaustive]
EXHAUSTIVE = [n for n, c in SAMPLERS.items() if c.exhaustive]


@pytest.mark.parametrize("name", DRAWING)
def test_shape_range_and_device(name):
    torch.manual_seed(0)
    s = make(name)
    user = torch.arange(13)
    pos_item = torch.randint(1, 40, (13,))
    nb = s.sample(user, pos_item)
    n = 13 if name == "in_batch" else 7
    assert nb.items.shape == (13, n) and nb.items.dtype == torch.long
    assert int(nb.items.min()) >= FIRST_ITEM and int(nb.items.max()) < 40
    assert nb.log_q is None or nb.log_q.shape == nb.items.shape
    assert nb.mask is None or (nb.mask.shape == nb.items.shape and nb.mask.dtype == torch.bool)
    assert nb.is_shared == (not SAMPLERS.get(name).per_row)


@pytest.mark.parametrize("name", DRAWING)
def test_exclusion_never_returns_training_positive(name, positive_set):
    ps, mask = positive_set
    torch.manual_seed(1)
    s = make(name, n_items=mask.shape[1], num=25, positives=ps)
    user = torch.arange(mask.shape[0]).repeat(20)
    nb = s.sample(user, torch.randint(1, mask.shape[1], user.shape))
    neg = valid_items(nb)
    hit = mask[user.unsqueeze(1).expand_as(neg), neg.clamp_min(0)] & (neg >= 0)
    assert not hit.any()
    assert (neg >= 0).float().mean() > 0.3  # not vacuous: most negatives stay valid


@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_exhaustive_sampler_excludes_exactly_the_positives(name, positive_set):
    # Every other item is a negative: what the batch excludes must be each row's training
    # positives and its own positive, nothing more (dense and hashed positive sets).
    ps, mask = positive_set
    user = torch.tensor([0, 3, 3, 7, 1])
    pos_item = torch.tensor([1, 2, 5, 9, 4])
    for positives in (ps, None):
        s = make(name, n_items=mask.shape[1], positives=positives)
        nb = s.sample(user, pos_item)
        want = mask[user].clone() if positives is not None else torch.zeros(5, mask.shape[1], dtype=torch.bool)
        want[torch.arange(5), pos_item] = True
        got = nb.excluded.mask(5, torch.arange(mask.shape[1]))
        assert torch.equal(got, want)
        assert nb.items.shape == (5, 1)  # "the" negative of the model's own terms only


def test_all_sampler_block_size_is_checked():
    with pytest.raises(ConfigError, match="all_block_size"):
        make("all", block=0)


def test_without_exclusion_positives_do_appear():
    users, items, mask = random_interactions()
    torch.manual_seed(2)
    s = build_sampler("uniform", n_items=mask.shape[1], num=25)
    user = torch.arange(mask.shape[0]).repeat(20)
    neg = s.sample(user, torch.ones_like(user)).items
    # about 30% of draws should be positives: the check above is not vacuous
    assert 0.2 < mask[user.unsqueeze(1).expand_as(neg), neg].float().mean() < 0.4


def test_uniform_is_uniform_at_fixed_seed():
    torch.manual_seed(3)
    n_items, n = 51, 200_000
    s = build_sampler("uniform", n_items=n_items, num=100)
    neg = s.sample(torch.zeros(n // 100, dtype=torch.long), None).items
    counts = torch.bincount(neg.view(-1), minlength=n_items)[FIRST_ITEM:].double()
    expected = n / (n_items - FIRST_ITEM)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 49 degrees of freedom: the 99.9% quantile is about 85.4
    assert chi2 < 85.4
    assert counts.min() > 0


def test_exclusion_leaves_the_rest_uniform():
    # One user owns items 1..10; negatives must be uniform over 11..30.
    ps = PositiveSet(torch.zeros(10, dtype=torch.long), torch.arange(1, 11), n_items=31, n_users=1)
    torch.manual_seed(4)
    s = build_sampler("uniform", n_items=31, num=25, positives=ps)
    neg = s.sample(torch.zeros(2000, dtype=torch.long), None).items
    counts = torch.bincount(neg.view(-1), minlength=31).double()
    assert counts[:11].sum() == 0
    expected = neg.numel() / 20
    chi2 = float(((counts[11:] - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # 19 dof, 99.9%


@pytest.mark.parametrize("num", [0, -3])
def test_neg_num_below_one_is_refused(num):
    with pytest.raises(ConfigError, match="neg_num"):
        build_sampler("uniform", n_items=40, num=num)


def test_neg_num_must_be_below_catalogue_when_excluding():
    users, items, mask = random_interactions()
    ps = PositiveSet(users, items, n_items=40)
    with pytest.raises(ConfigError, match=r"neg_num=39 .*smaller than the number of items \(39\)"):
        build_sampler("uniform", n_items=40, num=39, positives=ps)
    build_sampler("uniform", n_items=40, num=38, positives=ps)


def test_unknown_sampler_lists_known_ones():
    with pytest.raises(ConfigError, match=r"neg_sampler='nope'.*uniform"):
        build_sampler("nope", n_items=40, num=3)


# ------------------------------------------------------------------------------------ popularity
def chi2_p_value_ok(observed, expected, dof_quantile):
    keep = expected > 0
    chi2 = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    return chi2 < dof_quantile, chi2


def test_alias_table_reproduces_the_distribution_exactly():
    p = np.array([0.0, 0.5, 0.1, 0.0, 0.25, 0.15])
    prob, alias = alias_table(p)
    n = len(p)
    implied = prob / n
    np.add.at(implied, alias, (1 - prob) / n)
    np.testing.assert_allclose(implied, p, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_popularity_frequencies_match_counts_to_the_alpha(alpha):
    """At a fixed seed, 200k draws: chi-square against count ** alpha (normalised); items with no
    training interaction are never drawn when alpha > 0."""
    torch.manual_seed(5)
    n_items = 31
    counts = torch.tensor([0] + [0, 0] + list(range(1, 29)))  # items 1 and 2 unseen in training
    s = build_sampler("popularity", n_items=n_items, num=100, item_counts=counts, alpha=alpha)
    nb = s.sample(torch.zeros(2000, dtype=torch.long), None)
    freq = torch.bincount(nb.items.view(-1), minlength=n_items).double()
    w = counts.double() ** alpha
    w[0] = 0
    expected = w / w.sum() * nb.items.numel()
    ok, chi2 = chi2_p_value_ok(freq, expected, 59.7)  # <= 29 dof, 99.9% quantile
    assert ok, chi2
    if alpha > 0:
        assert freq[1] == 0 and freq[2] == 0
    # log q of what was drawn is log of the normalised weight
    torch.testing.assert_close(nb.log_q, torch.log(w / w.sum())[nb.items].float())
    # and the relative frequencies are close to the expected ones item by item
    assert torch.allclose(freq / freq.sum(), w / w.sum(), atol=0.006)


def test_popularity_with_exclusion_redraws_from_the_same_distribution():
    counts = torch.tensor([0, 40, 30, 20, 10, 5, 5])
    ps = PositiveSet(torch.zeros(2, dtype=torch.long), torch.tensor([1, 4]), n_items=7, n_users=1)
    torch.manual_seed(6)
    s = build_sampler("popularity", n_items=7, num=5, positives=ps, item_counts=counts, alpha=1.0)
    nb = s.sample(torch.zeros(20000, dtype=torch.long), None)
    freq = torch.bincount(nb.items.view(-1), minlength=7).double()
    assert freq[1] == 0 and freq[4] == 0
    w = counts.double().clone()
    w[[0, 1, 4]] = 0
    ok, chi2 = chi2_p_value_ok(freq, w / w.sum() * nb.items.numel(), 18.5)  # 4 dof
    assert ok, chi2


@pytest.mark.parametrize("alpha", [-0.5, float("nan"), True, "1"])
def test_popularity_alpha_must_be_a_number_at_least_zero(alpha):
    with pytest.raises(ConfigError, match="neg_pop_alpha"):
        build_sampler("popularity", n_items=7, num=3, item_counts=torch.ones(7, dtype=torch.long), alpha=alpha)


def test_samplers_that_need_counts_say_so():
    with pytest.raises(ValueError, match="item_counts"):
        build_sampler("popularity", n_items=7, num=3)


def test_log_q_correction_of_sl_changes_the_loss_only_through_q():
    counts = torch.tensor([0, 40, 30, 20, 10])
    s = build_sampler("popularity", n_items=5, num=6, item_counts=counts, alpha=1.0)
    torch.manual_seed(0)
    nb = s.sample(torch.zeros(3, dtype=torch.long), None)
    pos, neg = torch.zeros(3), torch.zeros(3, 6)
    # equal scores: the corrected loss is logsumexp(-log q) per row
    expected = torch.logsumexp(-nb.log_q, dim=1)
    torch.testing.assert_close(sl_loss(pos, neg, 1.0, neg_log_q=nb.log_q), expected)


# -------------------------------------------------------------------------------------- in_batch
def test_in_batch_masks_own_positive_duplicates_and_training_positives():
    # user 0 owns items 1, 2; user 1 owns 3; user 2 owns 5
    ps = PositiveSet(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 3, 5]), n_items=7, n_users=3)
    counts = torch.tensor([0, 4, 3, 2, 1, 1, 1])
    user = torch.tensor([0, 0, 1, 2, 1])
    pos_item = torch.tensor([1, 2, 3, 5, 3])
    s = build_sampler("in_batch", n_items=7, num=99, positives=ps, item_counts=counts)
    nb = s.sample(user, pos_item)
    assert nb.is_shared and nb.items.shape == (5, 5)
    assert torch.equal(nb.items, pos_item.expand(5, 5))
    expected = torch.tensor([
        # cols: items 1, 2, 3, 5, 3
        [False, False, True, True, True],   # user 0, pos 1: own (1) and training positive 2 masked
        [False, False, True, True, True],   # user 0, pos 2
        [True, True, False, True, False],   # user 1, pos 3: itself and the duplicate 3 masked
        [True, True, True, False, True],    # user 2, pos 5
        [True, True, False, True, False],   # user 1, pos 3 (duplicate row)
    ])
    assert torch.equal(nb.mask, expected)
    torch.testing.assert_close(nb.log_q, torch.log(counts.double() / 12).float()[pos_item].expand(5, 5))
    # without exclusion only the row's own positive and its duplicates are masked
    s2 = build_sampler("in_batch", n_items=7, num=99, item_counts=counts)
    assert torch.equal(s2.sample(user, pos_item).mask, pos_item.unsqueeze(0) != pos_item.unsqueeze(1))


# ---------------------------------------------------------------------------------------- shared
def test_shared_negatives_are_one_set_with_row_masks(positive_set):
    ps, mask = positive_set
    torch.manual_seed(7)
    s = build_sampler("shared", n_items=mask.shape[1], num=60, positives=ps)
    user = torch.arange(mask.shape[0])
    pos_item = torch.randint(1, mask.shape[1], user.shape)
    nb = s.sample(user, pos_item)
    assert nb.is_shared and nb.items.stride(0) == 0 and torch.equal(nb.items, nb.items[0].expand_as(nb.items))
    expected = ~mask[user.unsqueeze(1), nb.items[0].unsqueeze(0)] & (nb.items != pos_item.unsqueeze(1))
    assert torch.equal(nb.mask, expected)
    # without exclusion only the row's own positive is masked
    s2 = build_sampler("shared", n_items=mask.shape[1], num=60)
    nb2 = s2.sample(user, pos_item)
    assert torch.equal(nb2.mask, nb2.items != pos_item.unsqueeze(1))


def test_shared_draws_are_uniform():
    torch.manual_seed(8)
    s = build_sampler("shared", n_items=21, num=1000)
    freq = torch.zeros(21, dtype=torch.float64)
    for _ in range(100):
        freq += torch.bincount(s.sample(torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)).items[0], minlength=21)
    expected = torch.full((21,), 100 * 1000 / 20.0, dtype=torch.float64)
    expected[0] = 0
    ok, chi2 = chi2_p_value_ok(freq, expected, 45.3)  # 19 dof
    assert ok, chi2


@pytest.mark.parametrize("score_fn", ["cosine", "dot"])
@pytest.mark.parametrize("path", ["full", "gather"])
def test_shared_scoring_path_equals_per_row_scoring(score_fn, path):
    g = torch.Generator().manual_seed(0)
    users, table = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(30, 8, generator=g, dtype=torch.float64)
    pos_item = torch.randint(1, 30, (5,), generator=g)
    shared = torch.randint(1, 30, (11,), generator=g).expand(5, 11)
    assert is_shared(shared) and not is_shared(shared.contiguous())
    for alpha in (0.0, 0.5):  # alpha 0: the similarity itself
        a = batch_scores(users, table, pos_item, shared, score_fn, path, affinity_alpha=alpha)
        b = batch_scores(users, table, pos_item, shared.contiguous(), score_fn, path, affinity_alpha=alpha)
        for x, y in ((a.pos, b.pos), (a.neg, b.neg), (a.affinity, b.affinity)):
            torch.testing.assert_close(x, y)


# ----------------------------------------------------------------------------- false negatives
def test_false_negative_noise_draws_from_the_users_pool_with_probability_p():
    n_users, n_items = 4, 50
    pool_user = torch.tensor([0, 0, 0, 1, 1])
    pool_item = torch.tensor([40, 41, 42, 43, 44])
    torch.manual_seed(9)
    inner = build_sampler("uniform", n_items=n_items, num=200)
    s = FalseNegativeSampler(inner, pool_user, pool_item, n_users, p=0.3)
    user = torch.tensor([0, 1, 2, 3]).repeat(50)
    neg = s.sample(user, torch.ones_like(user)).items
    from_pool = torch.zeros_like(neg, dtype=torch.bool)
    for u, items in ((0, [40, 41, 42]), (1, [43, 44])):
        rows = user == u
        from_pool[rows] = torch.isin(neg[rows], torch.tensor(items))
    # users 0, 1: ~ p + (1 - p) * |pool| / 49 of their negatives are pool items
    for u, k in ((0, 3), (1, 2)):
        frac = from_pool[user == u].float().mean().item()
        expected = 0.3 + 0.7 * k / 49
        assert abs(frac - expected) < 0.02, (u, frac, expected)
    # users 2, 3 have no pool: never replaced (uniform only)
    assert s.replaced > 0 and abs(s.replaced / s.drawn - 0.3 / 2) < 0.01
    # the pool items of user 0 never appear among user 1's replacements and vice versa beyond uniform
    frac_other = torch.isin(neg[user == 1], torch.tensor([40, 41, 42])).float().mean().item()
    assert frac_other < 0.7 * 3 / 49 + 0.02


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_false_negative_noise_extremes(p):
    inner = build_sampler("uniform", n_items=50, num=30)
    s = FalseNegativeSampler(inner, torch.tensor([0, 0]), torch.tensor([45, 46]), 2, p=p)
    neg = s.sample(torch.zeros(10, dtype=torch.long), None).items
    in_pool = torch.isin(neg, torch.tensor([45, 46]))
    assert in_pool.all() if p == 1 else s.replaced == 0


def test_false_negative_noise_refuses_shared_negatives():
    with pytest.raises(ConfigError, match="per-row sampler"):
        FalseNegativeSampler(build_sampler("shared", 50, 5), torch.tensor([0]), torch.tensor([3]), 1, 0.5)


# --------------------------------------------------------------------------------- from config
def sampler_from(cfg, dataset, n_items, n_users):
    """The run's sampler built as the recommender builds it: settings parsed once, then the factory."""
    s = PluginSettings.from_config(plugin_defaults("SL", **cfg))
    return sampler_for_run(s.rec, s.protocols, dataset, n_items=n_items, n_users=n_users)


def fake_dataset(users, items, noise=None):
    ds = SimpleNamespace(inter_feat={"user_id": users, "item_id": items}, uid_field="user_id", iid_field="item_id")
    if noise is not None:
        setattr(ds, NOISE_ATTR, noise)
    return ds


def test_sampler_from_config_counts_the_training_split_it_is_given():
    users = torch.tensor([1, 1, 2, 2, 2, 3])
    items = torch.tensor([1, 2, 1, 3, 4, 1])
    cfg = dict(neg_sampler="popularity", neg_num=2, exclude_positives=True, neg_pop_alpha=1.0)
    s = sampler_from(cfg, fake_dataset(users, items), n_items=6, n_users=4)
    torch.testing.assert_close(s.probs, torch.tensor([0, 3, 1, 1, 1, 0], dtype=torch.float64) / 6)
    assert s.positives is not None and bool(s.positives.contains(torch.tensor(2), torch.tensor(3)))


def test_sampler_from_config_wraps_false_negative_noise_and_requires_prepared_data():
    users, items = torch.tensor([1, 1, 2]), torch.tensor([1, 2, 3])
    cfg = dict(neg_sampler="uniform", neg_num=2, exclude_positives=False, fn_pool_ratio=0.1, fn_noise_p=0.5)
    with pytest.raises(ConfigError, match="data_preparation"):
        sampler_from(cfg, fake_dataset(users, items), n_items=6, n_users=3)
    noise = TrainingNoise(ProtocolSettings(0.1, 0.5), seed=0, n_train_before=4,
                          fn_pool_user=torch.tensor([2]), fn_pool_item=torch.tensor([4]))
    s = sampler_from(cfg, fake_dataset(users, items, noise), n_items=6, n_users=3)
    assert isinstance(s, FalseNegativeSampler) and s.p == 0.5
    with pytest.raises(ConfigError, match="per-row"):
        sampler_from(dict(cfg, neg_sampler="in_batch"), fake_dataset(users, items, noise), n_items=6, n_users=3)
