"""BSL: bilateral softmax loss (Wu et al., arXiv 2312.12882)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, prepare_mask, zero_empty_rows
from recbole_dsl.losses.lse import scaled_logsumexp
from recbole_dsl.checks import check_bool, check_choice, check_positive
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
    weight: Optional[float] = None,
    neg_mean: bool = True,
) -> Tensor:
    """Bilateral softmax, per row (no reduction), the one formula behind BSL's three published forms:
    ``l_b = -LME_{k in S_b}(s_p[k] / tau1) + c * L_j(s_n[b, j] / tau2)``,
    tau1 = tau_pos, tau2 = tau_neg, S_b = rows whose ``group`` value (e.g. user id) equals row b's,
    c = ``weight`` (default tau2 / tau1: the paper's equation divided by tau1), and L the
    log-mean-exp over the negatives (``neg_mean``) or their logsumexp (the paper's pseudocode; a
    constant log N apart).

    ``group=None`` means S_b = {b}: then with tau1 == tau2 and c = 1 this is exactly SL (minus log N
    with the mean). BSL differs from a rescaled SL only when a batch holds several positives of one
    user: the positive side then weights a user's higher-scoring positives more (~ exp(s_p / tau1)).

    ``neg_mask`` ([B, N] bool, True = valid): the negative term runs over the valid negatives only
    (the mean over their number); a row with no valid negative gives 0. The positive side still
    counts every row's positive.
    """
    check_scores(pos, neg)
    mask, rows = prepare_mask(neg, neg_mask)
    pos_term = _positive_lme(pos, tau_pos, group)
    neg_term = scaled_logsumexp(neg, 1.0 / tau_neg, None, mask)
    if neg_mean:
        neg_term = neg_term - (math.log(neg.shape[1]) if mask is None else torch.log(mask.sum(dim=1).to(neg.dtype)))
    c = tau_neg / tau_pos if weight is None else weight
    return zero_empty_rows(-pos_term + c * neg_term, rows)


# The published forms (../docs/losses.md, BSL): how each maps onto bsl_loss.
BSL_FORMS = ("paper", "pseudocode", "official")


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
    """Bilateral softmax (see `bsl_loss`) in one of its published forms (``bsl_form``):

    - ``paper``, the paper's equation: tau1 = ``loss_tau_pos``, tau2 = ``loss_tau``, c = tau2 / tau1,
      log-mean-exp over the negatives;
    - ``pseudocode``, the paper's Algorithms 1-2: per row, c = tau1 / tau2, logsumexp over them;
    - ``official``, the official code's (the paper's tables; its README's t1 and t2 as ``bsl_t1``,
      ``bsl_t2``): one temperature t1 inside every exp, the negative term weighted by t2,
      log-mean-exp; t2 = 1 is SL with the positives pooled per user.

    With ``group_positives`` the rows of one user (ctx.user) share the positive LME (not in the
    per-row pseudocode form); without user-grouped batches every user appears about once per batch
    and BSL is only a rescaled SL."""

    name = "BSL"
    supports_all = True
    params = {"tau_pos": "loss_tau_pos", "tau_neg": "loss_tau", "group_positives": "bsl_group_positives",
              "form": "bsl_form", "t1": "bsl_t1", "t2": "bsl_t2"}

    # the same argument order as bsl_loss(pos, neg, tau_pos, tau_neg): tau1, then tau2
    def __init__(self, tau_pos: float = 0.1, tau_neg: float = 0.1, group_positives: bool = True,
                 form: str = "paper", t1: float = 0.1, t2: float = 1.0):
        super().__init__()
        kw = self.check(dict(tau_pos=tau_pos, tau_neg=tau_neg, group_positives=group_positives, form=form,
                             t1=t1, t2=t2))
        self.form, self.group_positives = kw["form"], kw["group_positives"]
        self.tau_pos, self.tau_neg, self.t1, self.t2 = kw["tau_pos"], kw["tau_neg"], kw["t1"], kw["t2"]
        if self.form == "official":
            self._temps, self._weight, self._mean, self._grouped = (self.t1, self.t1), self.t2, True, self.group_positives
        elif self.form == "pseudocode":
            self._temps, self._weight, self._mean, self._grouped = ((self.tau_pos, self.tau_neg),
                                                                    self.tau_pos / self.tau_neg, False, False)
        else:
            self._temps, self._weight, self._mean, self._grouped = ((self.tau_pos, self.tau_neg),
                                                                    self.tau_neg / self.tau_pos, True,
                                                                    self.group_positives)

    @classmethod
    def check(cls, kwargs, neg_num=None):
        # absent from configs pickled into checkpoints written before the forms existed: the paper's form
        defaults = {"form": "paper", "t1": 0.1, "t2": 1.0}
        kwargs = {**kwargs, **{k: v for k, v in defaults.items() if kwargs.get(k) is None}}
        return dict(kwargs, tau_pos=check_positive("loss_tau_pos", kwargs["tau_pos"]),
                    tau_neg=check_positive("loss_tau", kwargs["tau_neg"]),
                    group_positives=check_bool("bsl_group_positives", kwargs["group_positives"]),
                    form=check_choice("bsl_form", kwargs["form"], BSL_FORMS),
                    t1=check_positive("bsl_t1", kwargs["t1"]), t2=check_positive("bsl_t2", kwargs["t2"]))

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        group = ctx.user if self._grouped else None
        (tau_pos, tau_neg) = self._temps
        return bsl_loss(pos, neg, tau_pos, tau_neg, group, ctx.neg_mask, self._weight, self._mean)

    def compute_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems) -> Tensor:
        tau_pos, tau_neg = self._temps
        pos_term = _positive_lme(pos, tau_pos, all_items.group if self._grouped else None)
        rows = all_items.rows
        lse = row_lse_all(u, items, lambda s: s / tau_neg, **all_items.scan_kw)
        if self._mean:  # LME over the valid items: divide by their number (1 for empty rows, zeroed anyway)
            lse = lse - torch.log(torch.where(rows, all_items.counts, torch.ones_like(all_items.counts)).to(lse.dtype))
        return zero_empty_rows(-pos_term + self._weight * lse, rows)

    def extra_repr(self) -> str:
        if self.form == "official":
            return f"form=official, t1={self.t1}, t2={self.t2}, group_positives={self.group_positives}"
        return (f"form={self.form}, tau_pos={self.tau_pos}, tau_neg={self.tau_neg}"
                + (f", group_positives={self.group_positives}" if self.form == "paper" else ""))
