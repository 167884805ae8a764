"""The noise protocols of the BSL and PSL papers, applied to a training split.

Pure numpy on (user, item) id arrays, so they are tested without RecBole; `apply_training_noise`
applies them to a RecBole training Dataset (recbole_dsl.protocols.data_preparation calls it).

- False-negative noise (PSL, after BSL): a share ``fn_pool_ratio`` of the training interactions is
  held out of training as each user's false-negative pool; the sampler then draws each negative
  from the row's user's pool with probability ``fn_noise_p`` (recbole_dsl.samplers.noisy). One
  training interaction of every user is never held out, so no user loses its training data.
- False-positive noise (BSL RQ3): each user gets round(``fp_noise_ratio`` * its training count)
  random items it never interacted with (in any split), distinct, added to its training
  positives. Validation and test are untouched.
"""
from __future__ import annotations

from logging import getLogger
from typing import Tuple

import numpy as np
import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings, TrainingNoise

FIRST_ITEM = 1  # RecBole's item id 0 is padding


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    idx = np.searchsorted(sorted_keys, keys).clip(max=sorted_keys.size - 1)
    return sorted_keys[idx] == keys


def select_fn_pool(users: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask over the training rows: round(ratio * n) rows drawn uniformly at random, never
    the one protected row of each user (chosen at random), so every user keeps training data.
    Raises ConfigError when the ratio asks for more rows than that allows."""
    n = len(users)
    k = int(np.floor(ratio * n + 0.5))
    pool = np.zeros(n, dtype=bool)
    if k == 0:
        return pool
    perm = rng.permutation(n)
    _, first = np.unique(users[perm], return_index=True)
    eligible = np.ones(n, dtype=bool)
    eligible[perm[first]] = False  # one random row per user stays in training
    cand = perm[eligible[perm]]
    if k > cand.size:
        raise ConfigError(
            "fn_pool_ratio", ratio, f"at most {cand.size / n:.4f} on this training split",
            hint=f"holding out {k} of {n} training interactions would leave a user without training data",
        )
    pool[cand[:k]] = True
    return pool


def false_positive_counts(users: np.ndarray, n_users: int, ratio: float) -> np.ndarray:
    """[n_users] number of false positives per user: round(ratio * training count), halves up."""
    counts = np.bincount(users, minlength=n_users)
    return np.floor(ratio * counts + 0.5).astype(np.int64)


def draw_false_positives(
    users: np.ndarray, n_users: int, n_items: int, ratio: float, forbidden_users: np.ndarray,
    forbidden_items: np.ndarray, rng: np.random.Generator, max_rounds: int = 64,
) -> Tuple[np.ndarray, np.ndarray]:
    """(fp_users, fp_items): for every user round(ratio * its training count) distinct items drawn
    uniformly among the items it has no (user, item) pair with in (forbidden_users,
    forbidden_items) (all its interactions, every split). A user with fewer such items gets all of
    them. ``users`` are the training rows' users."""
    want = false_positive_counts(users, n_users, ratio)
    forb = np.unique(forbidden_users.astype(np.int64) * n_items + forbidden_items.astype(np.int64))
    seen_items = np.bincount(forb // n_items, minlength=n_users)[:n_users]
    free = (n_items - FIRST_ITEM) - seen_items
    want = np.minimum(want, np.maximum(free, 0))
    rep_user = np.repeat(np.arange(n_users, dtype=np.int64), want)
    out = np.full(rep_user.size, -1, dtype=np.int64)
    accepted = np.empty(0, dtype=np.int64)
    todo = np.arange(rep_user.size)
    for _ in range(max_rounds):
        if todo.size == 0:
            break
        cand = rng.integers(FIRST_ITEM, n_items, size=todo.size)
        keys = rep_user[todo] * n_items + cand
        bad = _in_sorted(forb, keys) | _in_sorted(accepted, keys)
        _, first = np.unique(keys, return_index=True)
        dup = np.ones(keys.size, dtype=bool)
        dup[first] = False
        bad |= dup
        out[todo[~bad]] = cand[~bad]
        accepted = np.sort(np.concatenate([accepted, keys[~bad]]))
        todo = todo[bad]
    for u in np.unique(rep_user[todo]):  # users with almost no free item left: enumerate the complement
        slots = todo[rep_user[todo] == u]
        taken = np.concatenate([forb[forb // n_items == u], accepted[accepted // n_items == u]]) % n_items
        free_items = np.setdiff1d(np.arange(FIRST_ITEM, n_items), taken)
        out[slots] = rng.choice(free_items, size=slots.size, replace=False)
    return rep_user, out


def _rows(inter, index: np.ndarray):
    from recbole.data.interaction import Interaction

    idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return Interaction({k: v[idx] for k, v in inter.interaction.items()})


def apply_training_noise(train, full, settings: ProtocolSettings, seed: int):
    """A copy of the RecBole training Dataset ``train`` with the noise protocols of ``settings``
    applied (false-negative pool held out, false positives added), carrying a `TrainingNoise`
    record as attribute NOISE_ATTR. ``full`` is the dataset before the split (for the items each
    user interacted with in any split). Deterministic given ``seed``."""
    from recbole.data.interaction import cat_interactions

    inter = train.inter_feat
    uid, iid = train.uid_field, train.iid_field
    users = inter[uid].numpy().astype(np.int64)
    items = inter[iid].numpy().astype(np.int64)
    n_users, n_items = train.user_num, train.item_num
    rng = np.random.default_rng(seed)
    record = TrainingNoise(settings=settings, seed=seed, n_train_before=len(users))
    keep = np.ones(len(users), dtype=bool)
    if settings.fn_pool_ratio > 0:
        pool = select_fn_pool(users, settings.fn_pool_ratio, rng)
        keep = ~pool
        # a (user, item) pair still in training (duplicate rows) is not a false negative
        kept_keys = np.unique(users[keep] * n_items + items[keep])
        real = ~_in_sorted(kept_keys, users[pool] * n_items + items[pool])
        record.fn_pool_user = torch.from_numpy(users[pool][real])
        record.fn_pool_item = torch.from_numpy(items[pool][real])
    kept = np.flatnonzero(keep)
    new_inter = _rows(inter, kept)
    if settings.fp_noise_ratio > 0:
        all_inter = full.inter_feat
        fp_u, fp_i = draw_false_positives(
            users[kept], n_users, n_items, settings.fp_noise_ratio,
            all_inter[uid].numpy(), all_inter[iid].numpy(), rng,
        )
        # the other fields of an added row (rating, timestamp, ...) come from a random training
        # row of the same user
        order = kept[np.argsort(users[kept], kind="stable")]
        counts = np.bincount(users[kept], minlength=n_users)
        start = np.cumsum(counts) - counts
        template = order[start[fp_u] + (rng.random(fp_u.size) * counts[fp_u]).astype(np.int64)]
        added = _rows(inter, template)
        added[iid] = torch.from_numpy(fp_i).to(inter[iid].dtype)
        new_inter = cat_interactions([new_inter, added])
        record.fp_user, record.fp_item = torch.from_numpy(fp_u), torch.from_numpy(fp_i)
    noisy = train.copy(new_inter)
    setattr(noisy, NOISE_ATTR, record)
    getLogger().info(
        f"noise protocols (seed {seed}): {record.n_train_before} training interactions; "
        f"{record.n_fn_pool} held out as false-negative pool (fn_pool_ratio={settings.fn_pool_ratio}, "
        f"fn_noise_p={settings.fn_noise_p}); {record.n_fp} false positives added "
        f"(fp_noise_ratio={settings.fp_noise_ratio}); {len(new_inter)} training interactions now"
    )
    return noisy
