"""`in_batch`: the other positives of the batch are each row's negatives."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from recbole_dsl.samplers.base import (SAMPLERS, NegativeBatch, NegativeSampler, PositiveSet, check_cross_rank,
                                      gather_ranks, SharedItems)


@SAMPLERS.register("in_batch")
class InBatchSampler(NegativeSampler):
    """Row b's negatives are the positive items of all B rows of the batch (``neg_num`` is not
    used: N = B), with the row's own positive and every duplicate of it masked (an item that is
    the row's positive never counts as its negative). With ``exclude_positives`` the other
    training positives of the row's user are masked too (false negatives a batch of the same
    user's rows would otherwise produce). Nothing is drawn: the negatives are shared by all rows
    and scored with one [B, d] x [d, B] product.

    An item appears in a batch about in proportion to its training count, so in-batch negatives
    are popularity-sampled (alpha = 1): the sampler gives log q(i) = log(count_i / total) for SL's
    ``sl_log_q_correction``, the correction of Yi et al. (RecSys 2019). Suits SL (with or without
    the correction), BSL and PSL as a cheap large-batch softmax; BPR/BCE work but see popular
    negatives more often. DSL works (its weights and slate ignore masked entries). Batches of one
    row have no valid negative: such a row contributes nothing to the loss.

    Distributed (``neg_cross_rank: True``), the negatives are the positives of every rank's part of
    the global batch: the item ids are all-gathered and scored against the rank's own replica of
    the model, so the loss of each row is the single-process in-batch loss over the whole global
    batch, and DDP's gradient average is that of the single-process loss.
    """

    name = "in_batch"
    needs_item_counts = True
    per_row = False
    params = {"cross_rank": "neg_cross_rank"}

    def __init__(self, n_items: int, num: int, positives: Optional[PositiveSet] = None,
                 item_counts: Optional[Tensor] = None, cross_rank: bool = False):
        super().__init__(n_items, num, positives)
        self.cross_rank = bool(cross_rank)
        counts = item_counts.detach().double().clamp_min(0)
        total = float(counts[1:].sum())
        if not total > 0:
            raise ValueError("in_batch sampler: the training split has no interactions")
        with torch.no_grad():
            self._log_p = torch.log(counts / total).float()  # -inf for items never in training

    @classmethod
    def check_num(cls, num: int, n_items: int, excluding: bool) -> None:
        return  # N is the batch size; neg_num is not used

    @classmethod
    def check(cls, kwargs):
        return check_cross_rank(kwargs)

    def to(self, device) -> "InBatchSampler":
        super().to(device)
        self._log_p = self._log_p.to(device)
        return self

    def sample(self, user: Tensor, pos_item: Tensor) -> NegativeBatch:
        b = pos_item.shape[0]
        shared = gather_ranks(pos_item) if self.cross_rank else pos_item
        n = shared.shape[0]
        items = shared.unsqueeze(0).expand(b, n)  # items[r, j] = shared[j], shared by all rows
        # A row's positive sits among the n items about once (more for a popular item): set those
        # entries from their positions rather than by B x n comparisons (about half the time at
        # B = n = 2048).
        index = SharedItems(shared, self.n_items)
        mask = torch.ones(b, n, dtype=torch.bool, device=shared.device)
        mask[index.positions(torch.arange(b, device=pos_item.device), pos_item)] = False
        if self.positives is not None:
            mask[self.positives.cols_of(user, index)] = False
        return NegativeBatch(items, self._log_p[shared].unsqueeze(0).expand(b, n), mask)
