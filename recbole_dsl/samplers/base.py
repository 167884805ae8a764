"""The `neg_sampler` registry and the on-device machinery samplers share.

A sampler draws the [B, N] negatives of a whole batch in one vectorised step on the model's
device. RecBole's own sampler works per user in Python (about 1.7 M rows/s) and tiles each
positive row N times, which makes N = 1000 cost minutes per epoch; here N only widens a tensor.

Every sampler returns a `NegativeBatch`: the [B, N] item ids, optionally the log sampling
probability of each (for a log-q correction) and a [B, N] mask of valid negatives (samplers that
cannot redraw per row, `in_batch` and `shared`, mask what must not count; the losses give masked
negatives no weight). Negatives shared by all rows (`shared`, `in_batch`) are an expanded view of
one [N] tensor (row stride 0), which the scoring path recognises and scores with one [B, d] x
[d, N] product.
"""
from __future__ import annotations

from dataclasses import dataclass
from logging import getLogger
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.registry import Registry

SAMPLERS: Registry = Registry("neg_sampler")

# Item id 0 is RecBole's padding item: real items are 1 .. n_items - 1.
FIRST_ITEM = 1


# Fibonacci hashing: the top bits of key * 2^64 / phi spread consecutive keys (a user's items)
# over the whole filter. As a signed int64; torch's int64 product wraps around.
_HASH_MULT = -7046029254386353131  # 0x9E3779B97F4A7C15


class PositiveSet:
    """Membership test for (user, item) training pairs, vectorised over any tensor shape.

    Small catalogues use a dense [n_users, n_items] boolean table (one gather per test).
    Larger ones must not: n_users x n_items grows with the square of the data (Gowalla's is 1.2 G
    cells). There the pairs are kept as sorted keys user * n_items + item (8 bytes per training
    pair), and a byte filter of about 16 cells per pair answers most tests in one lookup: a key
    whose hashed cell is empty is not a positive. Only keys that land on an occupied cell (the
    positives and about 1 in 16 others) go on to the exact binary search, which over every test
    of a batch costs about 20 random reads per key (BENCHMARKS.md, Scale). Memory grows with the
    number of training pairs, never with n_users x n_items.
    """

    # Dense table up to this many cells (bytes): ml-1m's 6k x 3.7k is 22 M.
    max_dense_cells = 1 << 26
    # Filter cells per training pair (rounded up to a power of two).
    filter_cells_per_pair = 16

    def __init__(self, users: Tensor, items: Tensor, n_items: int, n_users: Optional[int] = None):
        self.n_items = int(n_items)
        users, items = users.long(), items.long()
        n_users = int(users.max()) + 1 if n_users is None else int(n_users)
        self.dense = None
        self.keys = None
        self.filter = None
        self.starts = None
        if n_users * self.n_items <= self.max_dense_cells:
            self.dense = torch.zeros(n_users, self.n_items, dtype=torch.bool)
            self.dense[users, items] = True
        else:
            self.keys = torch.unique(users * self.n_items + items)  # sorted
            # Where each user's run of keys starts (n_users + 1 entries): a batch's pairs without
            # two binary searches over every key per batch.
            self.starts = torch.searchsorted(self.keys, torch.arange(n_users + 1) * self.n_items)
            # The item of every key, kept beside them: `pairs_of` runs every batch of the shared
            # samplers, and the int64 modulo over the batch users' pairs was a fifth of its cost.
            self.key_items = self.keys % self.n_items
            cells = max(64, self.keys.numel() * self.filter_cells_per_pair)
            self._bits = (cells - 1).bit_length()
            slots = torch.unique(self._slot(self.keys))
            words = torch.zeros(1 << (self._bits - 6), dtype=torch.long)
            # Distinct slots set distinct bits, so summing each word's bits is OR-ing them.
            words.index_add_(0, slots >> 6, torch.ones_like(slots) << (slots & 63))
            self.filter = words

    def _slot(self, keys: Tensor) -> Tensor:
        return ((keys * _HASH_MULT) >> (64 - self._bits)) & ((1 << self._bits) - 1)

    def _maybe(self, keys: Tensor) -> Tensor:
        """False where a key is certainly not a training pair (its filter cell is empty)."""
        slot = self._slot(keys.reshape(-1))
        word = self.filter.index_select(0, slot >> 6)
        return ((word >> (slot & 63)) & 1).view(keys.shape).bool()

    def to(self, device) -> "PositiveSet":
        if self.dense is not None:
            self.dense = self.dense.to(device)
        else:
            self.keys = self.keys.to(device)
            self.filter = self.filter.to(device)
            self.starts = self.starts.to(device)
            self.key_items = self.key_items.to(device)
        return self

    def contains_rows(self, user: Tensor, items: Tensor) -> Tensor:
        """[B, N] membership of items[b, j] in user[b]'s positives (the whole-batch test)."""
        if self.dense is not None:
            return self.dense[user].gather(1, items)  # row gather, then column gather: ~2x a 2-D index
        return self.contains(user.unsqueeze(1).expand_as(items), items)

    def contains_cols(self, user: Tensor, items: Tensor) -> Tensor:
        """[B, N] membership of items[j] in user[b]'s positives, for one [N] set shared by all rows."""
        if self.dense is not None:
            return self.dense[user.unsqueeze(1), items.unsqueeze(0)]
        out = torch.zeros(user.shape[0], items.shape[0], dtype=torch.bool, device=items.device)
        out[self.cols_of(user, items)] = True
        return out

    def cols_of(self, user: Tensor, items: Union[Tensor, "SharedItems"]) -> Tuple[Tensor, Tensor]:
        """(row, col) of every (b, j) with items[j] a training positive of user[b], for one [N] set
        shared by all rows (a tensor, or a `SharedItems` index of it): the sparse form of
        `contains_cols`."""
        if self.dense is not None:
            ids = items.items if isinstance(items, SharedItems) else items
            return self.dense[user.unsqueeze(1), ids.unsqueeze(0)].nonzero(as_tuple=True)
        # Testing all B x N pairs would be B x N lookups (2 M for 2048 rows and 1000 shared
        # items); the batch users' own positives are far fewer (their degrees summed), so look
        # those up among the N items instead: one count lookup rules out most of them, only the
        # rest are searched for their positions.
        index = items if isinstance(items, SharedItems) else SharedItems(items, self.n_items)
        return index.positions(*self.pairs_of(user))

    def pairs_of(self, user: Tensor) -> Tuple[Tensor, Tensor]:
        """(row, item): every training positive of each user[row], as flat [M] tensors."""
        if self.dense is not None:
            return self.dense[user].nonzero(as_tuple=True)
        # Keys are sorted by user, then item: a user's positives are one contiguous run.
        user = user.long()
        start = self.starts[user]
        lens = self.starts[user + 1] - start
        row = torch.repeat_interleave(torch.arange(user.shape[0], device=user.device), lens)
        # Pair k of row r is key start[r] + (k - first[r]): one [B] shift gathered by row.
        shift = start - (torch.cumsum(lens, 0) - lens)
        return row, self.key_items[torch.arange(row.numel(), device=user.device) + shift[row]]

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        if self.dense is not None:
            return self.dense[users, items]
        keys = users.long() * self.n_items + items.long()
        if self.keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        found = self._maybe(keys)
        cand = found.view(-1).nonzero().squeeze(1)
        if cand.numel():
            k = keys.reshape(-1).index_select(0, cand)
            idx = torch.searchsorted(self.keys, k).clamp_(max=self.keys.numel() - 1)
            found.view(-1)[cand] = self.keys.index_select(0, idx) == k
        return found


class SharedItems:
    """One [N] set of item ids shared by every row of a batch, indexed once for the questions its
    masks ask: where the items of (row, item) pairs sit among the N (every occurrence of an item
    drawn more than once). A count per catalogue item answers "is it among the N at all" in one
    lookup, so only the pairs that are there are searched for their positions (for `in_batch` on
    Gowalla, 18k of the 135k training pairs of a batch's users)."""

    def __init__(self, items: Tensor, n_items: int):
        self.items = items
        self.vals, self.perm = torch.sort(items)
        self.count = torch.bincount(items, minlength=int(n_items))

    def positions(self, row: Tensor, item: Tensor) -> Tuple[Tensor, Tensor]:
        """(row, col) of every pair (row[k], j) with items[j] == item[k]."""
        if row.numel() == 0 or self.items.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=self.items.device)
            return empty, empty
        hits = self.count[item]  # occurrences of item among the N
        keep = (hits > 0).nonzero().squeeze(1)
        row, item, hits = row[keep], item[keep], hits[keep]
        lo = torch.searchsorted(self.vals, item)
        rep = torch.repeat_interleave(torch.arange(row.numel(), device=row.device), hits)
        first = torch.cumsum(hits, 0) - hits
        return row[rep], self.perm[lo[rep] + torch.arange(rep.numel(), device=rep.device) - first[rep]]


def positions_among(items: Tensor, row: Tensor, item: Tensor) -> Tuple[Tensor, Tensor]:
    """(row, col) of every pair (row[k], j) with items[j] == item[k] (see `SharedItems`)."""
    if row.numel() == 0 or items.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=items.device)
        return empty, empty
    return SharedItems(items, int(max(items.max(), item.max())) + 1).positions(row, item)


@dataclass
class NegativeBatch:
    """The negatives of one batch of B positive rows.

    items: [B, N] long item ids. For negatives shared by every row it is ``shared.expand(B, N)``
        (a view with row stride 0): `is_shared` tells, and scoring uses one matrix product.
    log_q: [B, N] float or None: log of each negative's sampling probability (log-q correction);
        None where the proposal is uniform (the correction is then a constant).
    mask: [B, N] bool or None: True for valid negatives. Masked entries contribute nothing to
        any loss (see recbole_dsl.losses); None means all are valid.
    """

    items: Tensor
    log_q: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    # The `all` sampler: the (row, item) pairs that are not negatives (recbole_dsl.losses.full.Excluded;
    # every other real item is) and the item block size of the exact softmax. None for sampled
    # negatives; ``items`` is then only "the" negative of the model's own auxiliary terms.
    excluded: Optional[Any] = None
    block: int = 4096

    @property
    def is_shared(self) -> bool:
        return is_shared(self.items)

    @property
    def num(self) -> int:
        return self.items.shape[1]


def is_shared(neg_item: Tensor) -> bool:
    """True when [B, N] negatives are one [N] set expanded over the rows (row stride 0)."""
    return neg_item.dim() == 2 and neg_item.shape[0] > 1 and neg_item.stride(0) == 0


class NegativeSampler:
    """Base class. `sample(user, pos_item)` -> NegativeBatch (items [B, N], log_q, mask).

    Class attributes a subclass sets:
    - ``params``: constructor argument -> YAML key (filled from the run's settings, as for losses;
      ``check`` validates them once, when the Config is parsed);
    - ``needs_item_counts``: the constructor takes ``item_counts`` [n_items], the training-split
      interaction count of every item;
    - ``per_row``: negatives are drawn independently per row (so a row's negatives can be redrawn
      and protocols such as false-negative noise can replace them); False for shared negatives;
    - ``exhaustive``: every other item is a negative (the batch carries ``excluded``, not negatives);
      only losses with ``supports_all`` and adapters with ``supports_all_items`` serve it.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Dict[str, str]] = {}
    needs_item_counts: ClassVar[bool] = False
    per_row: ClassVar[bool] = True
    exhaustive: ClassVar[bool] = False
    # Rounds of redrawing the negatives that hit a training positive. Each round redraws only
    # the hits; a user with fraction f of the catalogue as positives keeps f**rounds of them.
    max_rounds: ClassVar[int] = 64

    def __init__(self, n_items: int, num: int, positives: Optional[PositiveSet] = None,
                 item_counts: Optional[Tensor] = None):
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

    @classmethod
    def check(cls, kwargs: Dict) -> Dict:
        """The sampler's own parameters (``params``), checked and normalised; ConfigError names the key."""
        return kwargs

    @classmethod
    def check_num(cls, num: int, n_items: int, excluding: bool) -> None:
        """Raise ConfigError when `num` negatives per row cannot be drawn."""
        if num < 1:
            raise ConfigError("neg_num", num, "an integer >= 1")
        n_real = n_items - FIRST_ITEM
        if excluding and num >= n_real:
            raise ConfigError(
                "neg_num", num,
                f"an integer smaller than the number of items ({n_real}) when exclude_positives is True",
            )

    def sample(self, user: Tensor, pos_item: Tensor) -> NegativeBatch:
        neg = self.draw((user.shape[0], self.num), user.device)
        if self.positives is not None:
            self._redraw_positives(user, neg)
        return NegativeBatch(neg, self.log_q(neg))

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
    """Items drawn uniformly from the catalogue (with replacement across a row), N per row.

    Suits every loss (SL, BSL, PSL, DSL, BPR, BCE); it is the sampler all three papers train SL,
    BSL and PSL with, and the one their robustness protocols assume. No log-q (uniform).
    With ``exclude_positives`` a row's training positives are redrawn.
    """

    name = "uniform"

    def draw(self, shape, device) -> Tensor:
        if torch.device(device).type == "cpu":
            return torch.from_numpy(self._np_rng.integers(FIRST_ITEM, self.n_items, size=shape, dtype=np.int64))
        return torch.randint(FIRST_ITEM, self.n_items, shape, device=device)


def build_sampler(name: str, n_items: int, num: int, positives: Optional[PositiveSet] = None,
                  item_counts: Optional[Tensor] = None, **kwargs):
    """The sampler registered as `name`. ``item_counts`` ([n_items] training-split counts) is
    required by samplers with ``needs_item_counts``; ``kwargs`` are the sampler's own parameters."""
    cls = SAMPLERS.get(name)
    cls.check_num(num, n_items, positives is not None)
    if cls.needs_item_counts:
        if item_counts is None:
            raise ValueError(f"neg_sampler '{name}' needs item_counts (training-split counts of every item)")
        kwargs["item_counts"] = item_counts
    return cls(n_items=n_items, num=num, positives=positives, **kwargs)


def gather_ranks(x: Tensor) -> Tensor:
    """`x` [n, ...] of every rank of the process group, concatenated in rank order (no gradient:
    item ids). A single process, or no group, returns `x`. Ranks may hold different n (an epoch's
    last batch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(v) for v in sizes))
    padded = torch.zeros((longest,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)])


def check_cross_rank(kwargs: Dict) -> Dict:
    from recbole_dsl.checks import check_bool

    if "cross_rank" in kwargs:
        kwargs["cross_rank"] = check_bool("neg_cross_rank", kwargs["cross_rank"])
    return kwargs
