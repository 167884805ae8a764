"""`shared`: one set of N negatives per batch, shared by all rows."""
from __future__ import annotations

from torch import Tensor

import torch

from recbole_dsl.samplers.base import (SAMPLERS, NegativeBatch, UniformSampler, check_cross_rank, gather_ranks,
                                      SharedItems)


@SAMPLERS.register("shared")
class SharedSampler(UniformSampler):
    """N items drawn uniformly (with replacement) once per batch and used as the negatives of every
    row; scored with one [B, d] x [d, N] matrix product instead of a [B, N, d] gather or a product
    against the whole catalogue: the fast path for large catalogues and large N.

    A shared item that is the row's own positive is masked for that row; with
    ``exclude_positives`` every shared item that is a training positive of the row's user is
    masked too (a shared set cannot be redrawn per row). Masked negatives contribute nothing to
    the loss, so a row has N minus its masked entries. Uniform proposal: no log-q.

    Suits every loss (SL, BSL, PSL, DSL, BPR, BCE). Rows see the same negatives, so the negatives
    of one batch are correlated; with N in the hundreds or more this is what large-catalogue
    sampled softmax usually does.

    Distributed (``neg_cross_rank: True``), each rank's N draws are all-gathered and every row of
    every rank has all world_size x N of them as negatives (scored against the rank's own replica
    of the model; masking as above).
    """

    name = "shared"
    per_row = False
    params = {"cross_rank": "neg_cross_rank"}

    def __init__(self, n_items, num, positives=None, item_counts=None, cross_rank: bool = False):
        super().__init__(n_items, num, positives, item_counts)
        self.cross_rank = bool(cross_rank)

    @classmethod
    def check(cls, kwargs):
        return check_cross_rank(kwargs)

    @classmethod
    def check_num(cls, num: int, n_items: int, excluding: bool) -> None:
        super().check_num(num, n_items, False)  # masked, never redrawn: any N >= 1 works

    def sample(self, user: Tensor, pos_item: Tensor) -> NegativeBatch:
        items = self.draw((self.num,), user.device)
        if items.device != user.device:
            items = items.to(user.device)
        if self.cross_rank:
            items = gather_ranks(items)
        # Few entries are masked (the rows' own positives and, with exclusion, their training
        # positives among the N): set those from their positions, not by B x N comparisons.
        index = SharedItems(items, self.n_items)
        mask = torch.ones(user.shape[0], items.shape[0], dtype=torch.bool, device=items.device)
        mask[index.positions(torch.arange(user.shape[0], device=user.device), pos_item)] = False
        if self.positives is not None:
            mask[self.positives.cols_of(user, index)] = False
        return NegativeBatch(items.unsqueeze(0).expand(user.shape[0], -1), None, mask)
