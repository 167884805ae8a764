"""`all`: every other item of the catalogue is a negative (the exact full softmax of the papers)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from recbole_dsl.checks import check_int
from recbole_dsl.losses.full import Excluded
from recbole_dsl.samplers.base import SAMPLERS, NegativeBatch, PositiveSet, UniformSampler


@SAMPLERS.register("all")
class AllItemsSampler(UniformSampler):
    """No sampling: row b's negatives are every real item that is not a training positive of its
    user (with ``exclude_positives: False``, every item but the row's own positive). This is the
    softmax the SL, BSL, PSL and DSL papers write; the sampled samplers approximate it.

    The loss is computed over blocks of ``all_block_size`` items with a running logsumexp (memory
    O(batch x block), see recbole_dsl/losses/full.py), so the cost per batch is about three
    products of the batch with the whole item table. ``neg_num`` is not used. The batch's
    ``items`` hold one uniform draw per row only for the model's own auxiliary terms that take
    "the" negative of a pairwise batch (LightGCN's and NGCF's L2 terms); the loss never sees it.

    Suits SL, BSL, PSL and DSL with embedding models (MF, LightGCN, NGCF, SGL, NCL, SimpleX, ...).
    """

    name = "all"
    per_row = False
    exhaustive = True
    params = {"block": "all_block_size"}

    def __init__(self, n_items: int, num: int, positives: Optional[PositiveSet] = None,
                 item_counts: Optional[Tensor] = None, block: int = 4096):
        super().__init__(n_items, 1, positives)
        self.block = self.check({"block": block})["block"]

    @classmethod
    def check(cls, kwargs):
        return dict(kwargs, block=check_int("all_block_size", kwargs.get("block", 4096), 1))

    @classmethod
    def check_num(cls, num: int, n_items: int, excluding: bool) -> None:
        return  # neg_num is not used

    def sample(self, user: Tensor, pos_item: Tensor) -> NegativeBatch:
        own = torch.arange(user.shape[0], device=user.device)
        one = self.draw((user.shape[0], 1), user.device).to(user.device)
        if self.positives is not None and self.positives.dense is not None:
            # Small catalogue: the users' rows of the dense positive table are the exclusion mask
            # (a dense batch of ml-100k users holds 340k pairs; sorting them cost more than the loss).
            mask = self.positives.dense[user]
            mask[own, pos_item] = True
            return NegativeBatch(one, excluded=Excluded.of_mask(mask), block=self.block)
        rows, items = own, pos_item
        if self.positives is not None:
            r, i = self.positives.pairs_of(user)
            rows, items = torch.cat([own, r]), torch.cat([pos_item, i])
        return NegativeBatch(one, excluded=Excluded.of(rows, items), block=self.block)
