import pytest
import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.samplers import SAMPLERS, PositiveSet, build_sampler
from recbole_dsl.samplers.base import FIRST_ITEM


def random_interactions(n_users=50, n_items=40, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_users, n_items, generator=g) < density
    mask[:, 0] = False  # padding item
    users, items = mask.nonzero(as_tuple=True)
    return users, items, mask


@pytest.fixture(params=["dense", "sorted"])
def positive_set(request, monkeypatch):
    users, items, mask = random_interactions()
    if request.param == "sorted":
        monkeypatch.setattr(PositiveSet, "max_dense_cells", 0)
    ps = PositiveSet(users, items, n_items=mask.shape[1], n_users=mask.shape[0])
    assert (ps.dense is not None) == (request.param == "dense")
    return ps, mask


def test_positive_set_membership_matches_data(positive_set):
    ps, mask = positive_set
    uu, ii = torch.meshgrid(torch.arange(mask.shape[0]), torch.arange(mask.shape[1]), indexing="ij")
    assert torch.equal(ps.contains(uu, ii), mask)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_shape_range_and_device(name):
    torch.manual_seed(0)
    s = build_sampler(name, n_items=40, num=7)
    user = torch.arange(13)
    neg, log_q = s.sample(user, torch.ones(13, dtype=torch.long))
    assert neg.shape == (13, 7) and neg.dtype == torch.long
    assert int(neg.min()) >= FIRST_ITEM and int(neg.max()) < 40
    assert log_q is None or log_q.shape == neg.shape


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_exclusion_never_returns_training_positive(name, positive_set):
    ps, mask = positive_set
    torch.manual_seed(1)
    s = build_sampler(name, n_items=mask.shape[1], num=25, positives=ps)
    user = torch.arange(mask.shape[0]).repeat(20)
    neg, _ = s.sample(user, torch.ones_like(user))
    assert not mask[user.unsqueeze(1).expand_as(neg), neg].any()


def test_without_exclusion_positives_do_appear():
    users, items, mask = random_interactions()
    torch.manual_seed(2)
    s = build_sampler("uniform", n_items=mask.shape[1], num=25)
    user = torch.arange(mask.shape[0]).repeat(20)
    neg, _ = s.sample(user, torch.ones_like(user))
    # about 30% of draws should be positives: the check above is not vacuous
    assert 0.2 < mask[user.unsqueeze(1).expand_as(neg), neg].float().mean() < 0.4


def test_uniform_is_uniform_at_fixed_seed():
    torch.manual_seed(3)
    n_items, n = 51, 200_000
    s = build_sampler("uniform", n_items=n_items, num=100)
    neg, _ = s.sample(torch.zeros(n // 100, dtype=torch.long), None)
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
    neg, _ = s.sample(torch.zeros(2000, dtype=torch.long), None)
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
