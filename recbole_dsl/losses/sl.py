"""SL: sampled softmax, the baseline of the BSL, PSL and DSL papers."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from recbole_dsl.checks import check_bool, check_positive
from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, check_mask, zero_empty_rows
from recbole_dsl.losses.lse import scaled_logsumexp
from recbole_dsl.losses.full import AllItems, row_lse_all


def check_scores(pos: Tensor, neg: Tensor) -> None:
    """Raise ValueError unless pos is [B] and neg is [B, N] with N >= 1."""
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0] or neg.shape[1] == 0:
        raise ValueError(
            f"expected pos [B] and neg [B, N>=1] scores, got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )


def sl_loss(
    pos: Tensor,
    neg: Tensor,
    tau: float,
    include_positive: bool = False,
    neg_log_q: Optional[Tensor] = None,
    neg_mask: Optional[Tensor] = None,
) -> Tensor:
    """Sampled softmax, per row (no reduction): ``l_b = logsumexp_j((s_n[j] - s_p) / tau - log q[b, j])``.

    The positive is left out of the denominator (the convention of BSL, arXiv 2312.12882, and
    PSL, arXiv 2411.00163). ``include_positive=True`` gives plain cross-entropy over
    ``[pos, negs] / tau`` with target 0, i.e. a logit 0 for the positive joins the logsumexp.
    ``neg_log_q`` ([B, N], log sampling probability of each negative) is subtracted from the
    negative logits only (log-q correction of a popularity sampler). Computed in log space.
    ``neg_mask`` ([B, N] bool, True = valid) leaves masked negatives out of the logsumexp; a row
    with no valid negative gives 0.
    """
    check_scores(pos, neg)
    check_mask(neg, neg_mask)
    if neg_log_q is not None and neg_log_q.shape != neg.shape:
        raise ValueError(f"neg_log_q must have the shape of neg {tuple(neg.shape)}, got {tuple(neg_log_q.shape)}")
    # logsumexp_j(x_j - c) == logsumexp_j(x_j) - c: subtracting the positive after the reduction
    # saves a [B, N] subtraction forward and a [B, N] reduction backward (N is up to thousands).
    p = pos / tau
    lse = scaled_logsumexp(neg, 1.0 / tau, neg_log_q, neg_mask)  # -inf for rows without a valid negative
    valid = torch.isfinite(lse) if neg_mask is not None else None
    if include_positive:
        lse = torch.logaddexp(lse, p)
    return zero_empty_rows(lse - p, valid)


@LOSSES.register("SL")
class SLLoss(RecLoss):
    """Sampled softmax (see `sl_loss`)."""

    name = "SL"
    supports_all = True
    params = {"tau": "loss_tau", "include_positive": "sl_include_positive", "log_q_correction": "sl_log_q_correction"}

    def __init__(self, tau: float = 0.1, include_positive: bool = False, log_q_correction: bool = False):
        super().__init__()
        kw = self.check(dict(tau=tau, include_positive=include_positive, log_q_correction=log_q_correction))
        self.tau, self.include_positive, self.log_q_correction = kw["tau"], kw["include_positive"], kw["log_q_correction"]

    @classmethod
    def check(cls, kwargs, neg_num=None):
        return dict(kwargs, tau=check_positive("loss_tau", kwargs["tau"]),
                    include_positive=check_bool("sl_include_positive", kwargs["include_positive"]),
                    log_q_correction=check_bool("sl_log_q_correction", kwargs["log_q_correction"]))

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        # Without a known q (uniform sampler) the correction is a constant: skip it.
        log_q = ctx.neg_log_q if self.log_q_correction else None
        return sl_loss(pos, neg, self.tau, self.include_positive, log_q, ctx.neg_mask)

    def compute_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems) -> Tensor:
        # every valid item is a negative, nothing is sampled: there is no log q to correct
        tau = self.tau
        lse = row_lse_all(u, items, lambda s: s / tau, **all_items.scan_kw)
        p = pos / tau
        if self.include_positive:
            lse = torch.logaddexp(lse, p)
        return zero_empty_rows(lse - p, all_items.rows)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, include_positive={self.include_positive}, log_q_correction={self.log_q_correction}"
