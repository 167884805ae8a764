"""Baselines under the same protocol as the softmax losses: BPR and BCE."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss
from recbole_dsl.losses.sl import check_positive, check_scores


def bpr_loss(pos: Tensor, neg: Tensor, tau: float = 1.0) -> Tensor:
    """BPR (Rendle et al., UAI 2009), per row: ``l_b = mean_j -log sigmoid((s_p - s_n[j]) / tau)``,
    computed as softplus. Averaged over the N negatives, so BPR uses the same sampler as the
    softmax losses (the fair comparison of the BSL/PSL papers)."""
    check_scores(pos, neg)
    return F.softplus((neg - pos.unsqueeze(1)) / tau).mean(dim=1)


def bce_loss(pos: Tensor, neg: Tensor, tau: float = 1.0) -> Tensor:
    """Pointwise binary cross-entropy, per row:
    ``l_b = -log sigmoid(s_p / tau) + mean_j -log(1 - sigmoid(s_n[j] / tau))``
    = ``softplus(-s_p / tau) + mean_j softplus(s_n[j] / tau)`` (positive term + mean negative
    term, so the N negatives do not outweigh the positive)."""
    check_scores(pos, neg)
    return F.softplus(-pos / tau) + F.softplus(neg / tau).mean(dim=1)


@LOSSES.register("BPR")
class BPRLoss(RecLoss):
    """BPR averaged over the sampled negatives (see `bpr_loss`)."""

    name = "BPR"
    params = {"tau": "loss_tau"}

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_positive("loss_tau", tau)

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        return bpr_loss(pos, neg, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


@LOSSES.register("BCE")
class BCELoss(RecLoss):
    """Pointwise BCE (see `bce_loss`)."""

    name = "BCE"
    params = {"tau": "loss_tau"}

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = check_positive("loss_tau", tau)

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        return bce_loss(pos, neg, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
