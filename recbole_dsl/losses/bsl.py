"""BSL: bilateral softmax loss (Wu et al., arXiv 2312.12882)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, prepare_mask, zero_empty_rows
from recbole_dsl.losses.lse import scaled_logsumexp
from recbole_dsl.checks import check_bool, check_positive
from recbole_dsl.losses.full import AllItems, row_lse_all
from recbole_dsl.losses.sl import check_scores


def grouped_lme(x: Tensor, group: Tensor) -> Tensor:
    """For each row b, log-mean-exp of x over the rows with the same group value; returns [B].

    Vectorised: per-group max (detached shift) by scatter_reduce, then index_add of exp(x - max).
    """
    _, inv, counts = torch.unique(group, return_inverse=True, return_counts=True)
    n_groups = counts.numel()
    m = torch.full((n_groups,), float("-inf"), dtype=x.dtype, device=x.device)
    m = m.scatter_reduce(0, inv, x.detach(), reduce="amax", include_self=True)
    s = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, inv, torch.exp(x - m[inv]))
    per_group = torch.log(s) + m - torch.log(counts.to(x.dtype))
    return per_group[inv]


def bsl_loss(
    pos: Tensor,
    neg: Tensor,
    tau_pos: float,
    tau_neg: float,
    group: Optional[Tensor] = None,
    neg_mask: Optional[Tensor] = None,
) -> Tensor:
    """Bilateral softmax, per row (no reduction), BSL paper (arXiv 2312.12882) divided by tau1:
    ``l_b = -LME_{k in S_b}(s_p[k] / tau1) + (tau2 / tau1) * LME_j(s_n[b, j] / tau2)``,
    tau1 = tau_pos, tau2 = tau_neg, S_b = rows whose ``group`` value (e.g. user id) equals row b's.

    ``group=None`` means S_b = {b}: then with tau1 == tau2 this is exactly SL minus log N.
    BSL differs from a rescaled SL only when a batch holds several positives of one user: the
    positive side then weights a user's higher-scoring positives more (weights ~ exp(s_p / tau1)).

    ``neg_mask`` ([B, N] bool, True = valid): the negative LME runs over the valid negatives only
    (mean over their number); a row with no valid negative gives 0. The positive side still
    counts every row's positive.
    """
    check_scores(pos, neg)
    mask, rows = prepare_mask(neg, neg_mask)
    pos_term = _positive_lme(pos, tau_pos, group)
    n = neg.shape[1] if mask is None else mask.sum(dim=1).to(neg.dtype)
    neg_lme = scaled_logsumexp(neg, 1.0 / tau_neg, None, mask) - (math.log(n) if mask is None else torch.log(n))
    return zero_empty_rows(-pos_term + (tau_neg / tau_pos) * neg_lme, rows)


def _positive_lme(pos: Tensor, tau_pos: float, group: Optional[Tensor]) -> Tensor:
    """[B] LME_{k in S_b}(s_p[k] / tau1); s_p[b] / tau1 itself without groups."""
    x = pos / tau_pos
    if group is None:
        return x
    if group.shape != pos.shape:
        raise ValueError(f"group must have the shape of pos {tuple(pos.shape)}, got {tuple(group.shape)}")
    return grouped_lme(x, group)


@LOSSES.register("BSL")
class BSLLoss(RecLoss):
    """Bilateral softmax (see `bsl_loss`). With ``group_positives`` the rows of one user (ctx.user)
    share the positive LME; without user-grouped batches every user appears about once per batch
    and BSL is only a rescaled SL."""

    name = "BSL"
    supports_all = True
    params = {"tau_pos": "loss_tau_pos", "tau_neg": "loss_tau", "group_positives": "bsl_group_positives"}

    # the same argument order as bsl_loss(pos, neg, tau_pos, tau_neg): tau1, then tau2
    def __init__(self, tau_pos: float = 0.1, tau_neg: float = 0.1, group_positives: bool = True):
        super().__init__()
        kw = self.check(dict(tau_pos=tau_pos, tau_neg=tau_neg, group_positives=group_positives))
        self.tau_pos, self.tau_neg, self.group_positives = kw["tau_pos"], kw["tau_neg"], kw["group_positives"]

    @classmethod
    def check(cls, kwargs, neg_num=None):
        return dict(kwargs, tau_pos=check_positive("loss_tau_pos", kwargs["tau_pos"]),
                    tau_neg=check_positive("loss_tau", kwargs["tau_neg"]),
                    group_positives=check_bool("bsl_group_positives", kwargs["group_positives"]))

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        group = ctx.user if self.group_positives else None
        return bsl_loss(pos, neg, self.tau_pos, self.tau_neg, group, ctx.neg_mask)

    def compute_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems) -> Tensor:
        pos_term = _positive_lme(pos, self.tau_pos, all_items.group if self.group_positives else None)
        tau_neg, rows = self.tau_neg, all_items.rows
        lse = row_lse_all(u, items, lambda s: s / tau_neg, **all_items.scan_kw)
        # LME over the valid items: divide by their number (1 for empty rows, zeroed anyway)
        log_n = torch.log(torch.where(rows, all_items.counts, torch.ones_like(all_items.counts)).to(lse.dtype))
        return zero_empty_rows(-pos_term + (tau_neg / self.tau_pos) * (lse - log_n), rows)

    def extra_repr(self) -> str:
        return f"tau_pos={self.tau_pos}, tau_neg={self.tau_neg}, group_positives={self.group_positives}"
