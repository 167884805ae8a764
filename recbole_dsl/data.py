"""User-grouped batching, which BSL's bilateral positive side needs.

With RecBole's shuffled interaction batches a user rarely has two positives in one batch,
so BSL's positive-side log-mean-exp collapses to a single term and BSL is only a rescaled SL.
This loader orders each epoch so that up to k positives of one user sit next to each other
(hence in the same batch), while every training interaction is still seen exactly once per epoch.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader


def grouped_order(users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(len(users)) made of shuffled chunks of up to k rows of one user.

    Rows of a user are shuffled, cut into chunks of k, and the chunks of all users are shuffled.
    """
    n = len(users)
    k = max(1, min(int(k), n))  # a chunk never holds more than every row (a larger k would overflow below)
    perm = rng.permutation(n)
    by_user = perm[np.argsort(users[perm], kind="stable")]  # grouped by user, random within
    u = users[by_user]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    chunks_per_user = (counts + k - 1) // k
    chunk_offset = np.r_[0, np.cumsum(chunks_per_user)[:-1]]
    chunk = np.repeat(chunk_offset, counts) + rank // k
    chunk_key = rng.permutation(int(chunks_per_user.sum()))[chunk]
    return by_user[np.lexsort((rank, chunk_key))]


class UserGroupedTrainDataLoader(TrainDataLoader):
    """RecBole's TrainDataLoader with the user-grouped epoch order of `grouped_order`."""

    def __init__(self, config, dataset, sampler, shuffle=True, positives_per_user=4):
        self.positives_per_user = int(positives_per_user)
        # Seeded from torch's RNG, as RecBole's own shuffle is: init_seed (and so `seed`) governs
        # the order, and runs that share one prepared dataset still differ by their seed.
        # Distributed, every rank must walk the same order (each takes its own part of it), so the
        # order is seeded from the config's seed, which all ranks share.
        self._world = 1 if config["single_spec"] else int(config["world_size"])
        seed = int(torch.randint(0, 2**62, (1,))) if self._world == 1 else int(config["seed"])
        self._rng = np.random.default_rng(seed)
        self._users = dataset.inter_feat[dataset.uid_field].numpy()
        self._order = grouped_order(self._users, self.positives_per_user, self._rng)
        self._grouped_shuffle = shuffle
        # The loader itself walks positions 0..n-1 in order; collate_fn maps them through the
        # epoch's grouped order, so chunks stay contiguous inside a batch.
        super().__init__(config, dataset, sampler, shuffle=False)

    @classmethod
    def wrap(cls, train_data: TrainDataLoader, positives_per_user: int) -> "UserGroupedTrainDataLoader":
        return cls(train_data.config, train_data._dataset, train_data._sampler,
                   shuffle=train_data.shuffle, positives_per_user=positives_per_user)

    def __iter__(self):
        if self._grouped_shuffle:
            self._order = grouped_order(self._users, self.positives_per_user, self._rng)
        return super().__iter__()

    def collate_fn(self, index):
        return super().collate_fn(self._order[self._positions(np.asarray(index))])

    def _positions(self, index: np.ndarray) -> np.ndarray:
        return index if self._world == 1 else rank_positions(index, self._world, len(self._order))


def rank_positions(index: np.ndarray, world: int, n: int) -> np.ndarray:
    """Distributed, RecBole's DistributedSampler gives rank r the loader positions r, r + W, r + 2W,
    ... (W = world); map them onto one contiguous part of the epoch's order per rank, so that a
    user's chunk is not split across ranks. A bijection of range(n): every row once per epoch."""
    rank, k = index % world, index // world
    sizes = (n - np.arange(world) + world - 1) // world  # positions each rank receives
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return starts[rank] + k
