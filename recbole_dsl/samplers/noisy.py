"""False-negative noise (the PSL / BSL robustness protocol) as a wrapper around a per-row sampler."""
from __future__ import annotations

import torch
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.samplers.base import NegativeBatch, NegativeSampler


class FalseNegativeSampler(NegativeSampler):
    """Each negative the inner sampler draws is replaced, with probability ``p`` (``fn_noise_p``),
    by an item drawn uniformly from the row's user's false-negative pool: true interactions held
    out of the training split (``fn_pool_ratio``, see recbole_dsl.protocols.noise). Users with an
    empty pool keep the inner sampler's negatives.

    The noise is invisible to the learner: log_q (if any) is the inner sampler's, evaluated at the
    returned items. Not in the registry: the protocol keys switch it on over `uniform` or
    `popularity` (samplers with a per-row draw); shared negatives cannot be replaced per row.
    """

    name = "false_negative"

    def __init__(self, inner: NegativeSampler, pool_user: Tensor, pool_item: Tensor, n_users: int, p: float):
        if not inner.per_row:
            raise ConfigError("neg_sampler", inner.name, "a per-row sampler (uniform or popularity) when fn_noise_p > 0",
                              hint="false-negative noise replaces negatives row by row; shared negatives cannot be")
        super().__init__(inner.n_items, inner.num, None)
        self.inner = inner
        self.p = float(p)
        pool_user, pool_item = pool_user.long().cpu(), pool_item.long().cpu()
        order = torch.argsort(pool_user, stable=True)
        self.pool_item = pool_item[order]
        self.pool_len = torch.bincount(pool_user, minlength=int(n_users))
        self.pool_start = torch.cumsum(self.pool_len, 0) - self.pool_len
        self.replaced = 0  # negatives replaced so far (for tests and logs)
        self.drawn = 0

    def to(self, device) -> "FalseNegativeSampler":
        self.inner.to(device)
        self.pool_item, self.pool_len, self.pool_start = (
            t.to(device) for t in (self.pool_item, self.pool_len, self.pool_start)
        )
        return self

    def sample(self, user: Tensor, pos_item: Tensor) -> NegativeBatch:
        nb = self.inner.sample(user, pos_item)
        neg = nb.items
        length = self.pool_len[user]  # [B]
        hit = (torch.rand(neg.shape, device=neg.device) < self.p) & (length > 0).unsqueeze(1)
        rows, cols = hit.nonzero(as_tuple=True)
        if rows.numel():
            u = user[rows]
            n_u = length[rows]
            offset = torch.minimum((torch.rand(rows.numel(), device=neg.device) * n_u).long(), n_u - 1)
            neg = neg.clone()
            neg[rows, cols] = self.pool_item[self.pool_start[u] + offset]
        self.replaced += int(rows.numel())
        self.drawn += neg.numel()
        log_q = self.inner.log_q(neg) if nb.log_q is not None else None
        return NegativeBatch(neg, log_q, nb.mask)

    def extra_repr(self) -> str:
        return f"p={self.p}, inner={self.inner.name}"
