"""Baselines under the same protocol as the softmax losses: BPR and BCE."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, masked_mean, prepare_mask, zero_empty_rows
from recbole_dsl.checks import check_positive
from recbole_dsl.losses.sl import check_scores


def bpr_loss(pos: Tensor, neg: Tensor, tau: float = 1.0, neg_mask: Optional[Tensor] = None) -> Tensor:
    """BPR (Rendle et al., UAI 2009), per row: ``l_b = mean_j -log sigmoid((s_p - s_n[j]) / tau)``,
    computed as softplus. Averaged over the N negatives, so BPR uses the same sampler as the
    softmax losses (the fair comparison of the BSL/PSL papers). With ``neg_mask`` ([B, N] bool,
    True = valid) the mean runs over the valid negatives; a row with none gives 0."""
    check_scores(pos, neg)
    mask, rows = prepare_mask(neg, neg_mask)
    return zero_empty_rows(masked_mean(F.softplus((neg - pos.unsqueeze(1)) / tau), mask, dim=1), rows)


def bce_loss(pos: Tensor, neg: Tensor, tau: float = 1.0, neg_mask: Optional[Tensor] = None) -> Tensor:
    """Pointwise binary cross-entropy, per row:
    ``l_b = -log sigmoid(s_p / tau) + mean_j -log(1 - sigmoid(s_n[j] / tau))``
    = ``softplus(-s_p / tau) + mean_j softplus(s_n[j] / tau)`` (positive term + mean negative
    term, so the N negatives do not outweigh the positive). With ``neg_mask`` ([B, N] bool,
    True = valid) the mean runs over the valid negatives; a row with none gives 0 (the whole row
    is left out, its positive term too, as for every loss)."""
    check_scores(pos, neg)
    mask, rows = prepare_mask(neg, neg_mask)
    return zero_empty_rows(F.softplus(-pos / tau) + masked_mean(F.softplus(neg / tau), mask, dim=1), rows)


class _ScaledBaseline(RecLoss):
    """A baseline whose one setting is the score scale ``1 / tau``; subclasses name the function."""

    params = {"tau": "loss_tau"}
    fn = None  # (pos, neg, tau, neg_mask) -> [B]

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = self.check(dict(tau=tau))["tau"]

    @classmethod
    def check(cls, kwargs, neg_num=None):
        return dict(kwargs, tau=check_positive("loss_tau", kwargs["tau"]))

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        return type(self).fn(pos, neg, self.tau, ctx.neg_mask)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


@LOSSES.register("BPR")
class BPRLoss(_ScaledBaseline):
    """BPR averaged over the sampled negatives (see `bpr_loss`)."""

    name = "BPR"
    fn = staticmethod(bpr_loss)


@LOSSES.register("BCE")
class BCELoss(_ScaledBaseline):
    """Pointwise BCE (see `bce_loss`)."""

    name = "BCE"
    fn = staticmethod(bce_loss)
