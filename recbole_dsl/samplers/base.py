"""The `neg_sampler` registry and the on-device machinery samplers share.

A sampler draws the [B, N] negatives of a whole batch in one vectorised step on the model's
device. RecBole's own sampler works per user in Python (about 1.7 M rows/s) and tiles each
positive row N times, which makes N = 1000 cost minutes per epoch; here N only widens a tensor.
"""
from __future__ import annotations

from logging import getLogger
from typing import ClassVar, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.registry import Registry

SAMPLERS: Registry = Registry("neg_sampler")

# Item id 0 is RecBole's padding item: real items are 1 .. n_items - 1.
FIRST_ITEM = 1


class PositiveSet:
    """Membership test for (user, item) training pairs, vectorised over any tensor shape.

    Small catalogues use a dense [n_users, n_items] boolean table (one gather per test);
    larger ones keep the pairs encoded as user * n_items + item, sorted once, and test with one
    searchsorted. Either way there is no per-row Python set lookup.
    """

    # Dense table up to this many cells (bytes): ml-1m's 6k x 3.7k is 22 M.
    max_dense_cells = 1 << 26

    def __init__(self, users: Tensor, items: Tensor, n_items: int, n_users: Optional[int] = None):
        self.n_items = int(n_items)
        users, items = users.long(), items.long()
        n_users = int(users.max()) + 1 if n_users is None else int(n_users)
        self.dense = None
        self.keys = None
        if n_users * self.n_items <= self.max_dense_cells:
            self.dense = torch.zeros(n_users, self.n_items, dtype=torch.bool)
            self.dense[users, items] = True
        else:
            self.keys = torch.unique(users * self.n_items + items)  # sorted

    def to(self, device) -> "PositiveSet":
        if self.dense is not None:
            self.dense = self.dense.to(device)
        else:
            self.keys = self.keys.to(device)
        return self

    def contains_rows(self, user: Tensor, items: Tensor) -> Tensor:
        """[B, N] membership of items[b, j] in user[b]'s positives (the whole-batch test)."""
        if self.dense is not None:
            return self.dense[user].gather(1, items)  # row gather, then column gather: ~2x a 2-D index
        return self.contains(user.unsqueeze(1).expand_as(items), items)

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        if self.dense is not None:
            return self.dense[users, items]
        keys = users.long() * self.n_items + items.long()
        if self.keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        idx = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[idx] == keys


class NegativeSampler:
    """Base class. `sample(user, pos_item)` -> (neg [B, N] long, neg_log_q [B, N] or None).

    neg_log_q is the log of each negative's sampling probability, for losses that offer a
    log-q correction; samplers whose proposal is uniform return None (the correction is a
    constant there).
    """

    name: ClassVar[str] = ""
    # Rounds of redrawing the negatives that hit a training positive. Each round redraws only
    # the hits; a user with fraction f of the catalogue as positives keeps f**rounds of them.
    max_rounds: ClassVar[int] = 64

    def __init__(self, n_items: int, num: int, positives: Optional[PositiveSet] = None):
        self.n_items = int(n_items)
        self.num = int(num)
        self.positives = positives
        self._warned = False
        # On the CPU numpy's PCG64 draws integers ~2x faster than torch's mt19937, and drawing
        # is the largest single cost of N = 1000 negatives. Seeded from torch's RNG, so
        # RecBole's init_seed still makes runs reproducible.
        self._np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))

    def to(self, device) -> "NegativeSampler":
        if self.positives is not None:
            self.positives.to(device)
        return self

    def draw(self, shape: Tuple[int, ...], device) -> Tensor:
        raise NotImplementedError

    def log_q(self, neg: Tensor) -> Optional[Tensor]:
        return None

    def sample(self, user: Tensor, pos_item: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        neg = self.draw((user.shape[0], self.num), user.device)
        if self.positives is not None:
            self._redraw_positives(user, neg)
        return neg, self.log_q(neg)

    def _redraw_positives(self, user: Tensor, neg: Tensor) -> None:
        # Test the whole [B, N] block once, then only the redrawn entries.
        flat = neg.view(-1)
        hit = torch.nonzero(self.positives.contains_rows(user, neg).view(-1)).squeeze(1)
        for _ in range(self.max_rounds):
            if hit.numel() == 0:
                return
            new = self.draw((hit.numel(),), neg.device)
            flat[hit] = new
            hit = hit[self.positives.contains(user[hit // neg.shape[1]], new)]
        if hit.numel() and not self._warned:
            getLogger().warning(
                f"neg_sampler: {hit.numel()} negatives still hit training positives after "
                f"{self.max_rounds} redraws (users with almost the whole catalogue as "
                "positives); they are kept as negatives"
            )
            self._warned = True


@SAMPLERS.register("uniform")
class UniformSampler(NegativeSampler):
    """Items drawn uniformly from the catalogue (with replacement across a row).

    Suits every loss; it is the sampler all three papers train SL, BSL and PSL with.
    """

    name = "uniform"

    def draw(self, shape, device) -> Tensor:
        if torch.device(device).type == "cpu":
            return torch.from_numpy(self._np_rng.integers(FIRST_ITEM, self.n_items, size=shape, dtype=np.int64))
        return torch.randint(FIRST_ITEM, self.n_items, shape, device=device)


def build_sampler(name: str, n_items: int, num: int, positives: Optional[PositiveSet] = None, **kwargs):
    cls = SAMPLERS.get(name)
    if num < 1:
        raise ConfigError("neg_num", num, "an integer >= 1")
    n_real = n_items - FIRST_ITEM
    if positives is not None and num >= n_real:
        raise ConfigError(
            "neg_num", num, f"an integer smaller than the number of items ({n_real}) when exclude_positives is True"
        )
    return cls(n_items=n_items, num=num, positives=positives, **kwargs)
