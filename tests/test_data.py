import numpy as np
import pytest

from recbole_dsl.data import grouped_order


@pytest.mark.parametrize("k", [1, 3, 4, 100])
def test_grouped_order_is_a_permutation_of_user_chunks(k):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, size=500)
    order = grouped_order(users, k, np.random.default_rng(1))
    assert np.array_equal(np.sort(order), np.arange(len(users)))
    u = users[order]
    # split the order into runs of one user; each run is at most k long... (two chunks of the same
    # user may land next to each other by chance, so cut runs at multiples of k from each chunk start)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    runs = np.diff(np.r_[starts, len(u)])
    counts = np.bincount(users, minlength=30)
    # every user with >= k rows appears in runs of length >= min(k, count) somewhere
    for user in np.unique(users):
        user_runs = runs[u[starts] == user]
        assert user_runs.sum() == counts[user]
        assert user_runs.max() >= min(k, counts[user])
    # number of runs is at most the number of chunks (chunks never interleave)
    assert len(runs) <= int(((counts + k - 1) // k).sum())


def test_grouped_order_reproducible_and_shuffled():
    users = np.repeat(np.arange(20), 8)
    a = grouped_order(users, 4, np.random.default_rng(7))
    b = grouped_order(users, 4, np.random.default_rng(7))
    c = grouped_order(users, 4, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # chunks of one user are not all adjacent: the chunk order is shuffled across users
    u = users[a]
    assert (u[1:] != u[:-1]).sum() > 20
