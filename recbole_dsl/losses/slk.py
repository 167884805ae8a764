"""SL@K: SoftmaxLoss@K (Yang et al., "Breaking the Top-K Barrier: Advancing Top-K Ranking Metrics
Optimization in Recommender Systems", KDD 2025, arXiv 2508.05673), a softmax loss aimed at
NDCG@K instead of full-list NDCG.

The paper, in short (summarised from its abstract and the reference implementation's account of
the loss, IR-Benchmark's SLatK optimizer; the bound and its conditions are in the paper).
Notation: s_ui the score of item i for user u, P_u the user's positives, I the catalogue,
d_uij = s_uj - s_ui.

* NDCG@K only counts the positives ranked in the top K. The quantile technique rewrites the
  truncation without ranks: item i is in u's top K exactly when s_ui >= beta_u^K, where
  beta_u^K is the K-th largest score of u over the whole catalogue (u's top-K score quantile).
  The truncation indicator is then I(s_ui >= beta_u^K), a plain comparison of two scores.
* Bounding the remaining rank term of NDCG@K the way SL bounds NDCG (the rank of i is
  sum_j I(d_uij >= 0)) gives a loss that is SL's per-positive term, switched on only for the
  positives that sit in the top K:

      L(u) = sum_{i in P_u} I(s_ui >= beta_u^K) * log sum_{j in I} I(d_uij >= 0).

* Both step functions are smoothed: the rank one by exp(x / tau_d), which turns the log-sum into
  SL's logsumexp, and the truncation one by sigmoid(x / tau_w):

      L_SL@K(u) = sum_{i in P_u} sigmoid((s_ui - beta_u^K) / tau_w) * log sum_j exp(d_uij / tau_d).

  So SL@K is SL with one weight per positive, w_ui = sigmoid((s_ui - beta_u^K) / tau_w): close
  to 1 for positives above the user's top-K threshold, close to 0 for those far below it.

Implemented here, per row b (one (user, positive) pair with N sampled negatives):

    w_b   = sigmoid((s_p - beta_b) / tau_w)
    l_b   = w_b * logsumexp_j((s_n[j] - s_p) / tau)

The softmax part is `recbole_dsl.losses.sl.sl_loss` (the positive left out of the denominator,
as in the reference implementation), in the same temperature convention as plain SL: ``loss_tau``
is tau_d itself (no halving as in PSL), so an SL temperature carries over unchanged; the
reference tunes it on SL's grid and reuses SL's optimum.

Mapping of the paper's symbols to the YAML keys: tau_d -> ``loss_tau``, tau_w -> ``slk_tau_w``,
K -> ``slk_k``; ``slk_quantile`` chooses the estimate of beta_u^K, ``slk_detach_weight`` whether
the weight passes gradient.

The quantile beta_b (no gradient in any case: it is an estimate made with the scores held fixed,
as in the reference's two-stage scheme, which refits the threshold with the model frozen and
trains the model with the threshold frozen):

* ``sample`` (default, the reference implementation's estimator): the K-th largest of the row's
  candidate scores, i.e. its positive and its valid negatives, M_b = 1 + (valid negatives)
  scores; the sample stands in for the catalogue. If K > M_b the smallest candidate is used.
  The reference sorts the user's training positives together with the N sampled negatives; a
  row here only has its own positive, and the estimate is biased low in the same way (a sample
  has fewer items above any threshold than the catalogue).
* ``catalogue``: the rank is rescaled to the catalogue: beta_b is the r_b-th largest candidate
  with r_b = K * M_b / n_items, the expected number of the catalogue's top K among M_b uniformly
  sampled items, clamped to [1, M_b], with linear interpolation between neighbouring ranks
  when r_b is fractional. n_items is ``LossContext.n_items`` (the number of real items); when it
  is None (unknown) the estimate falls back to ``sample`` (equivalently, n_items = M_b). The
  rescaling assumes uniform negatives; with a popularity or in-batch sampler it is biased
  (higher-scoring items are over-sampled), and in a large catalogue r_b is often below 1, where
  beta_b is the row's highest candidate score.

Differences from the reference implementation (itemrec's SLatK optimizer):

* beta is re-estimated in every batch from that batch's scores; the reference keeps one beta
  per user, refreshes it every ``epoch_quantile`` epochs (default 20) and starts it at 0. There
  is no per-user state here (a loss sees only scores), so there is no ``epoch_quantile`` key.
* The weight carries gradient through s_p (the reference does not detach it; its penalty-free,
  unnormalised variant is the one implemented). ``slk_detach_weight: True`` treats w_b as a
  constant instead (gradient w_b * grad(SL)), which is what its SogSL@K variant does.

Masked negatives (``LossContext.neg_mask`` False) take no part in the softmax nor in the
quantile; a row with no valid negative contributes 0.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

from recbole_dsl.checks import check_bool, check_choice, check_int, check_positive
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, any_per_row, check_mask, zero_empty_rows
from recbole_dsl.losses.sl import check_scores, sl_loss

QUANTILES = ("sample", "catalogue")


@torch.no_grad()
def slk_quantile(
    pos: Tensor,
    neg: Tensor,
    k: int,
    n_items: Optional[int] = None,
    quantile: str = "sample",
    neg_mask: Optional[Tensor] = None,
) -> Tensor:
    """[B] estimate of each row's top-K score threshold beta_b (no gradient; see the module
    docstring): the r_b-th largest of the row's candidates ``[pos, valid negatives]``, with
    ``r_b = K`` (``sample``, or ``catalogue`` with ``n_items=None``) or ``r_b = K * M_b / n_items``
    (``catalogue``), clamped to [1, M_b] and interpolated linearly between ranks."""
    if quantile not in QUANTILES:
        check_choice("slk_quantile", quantile, QUANTILES)
    check_scores(pos, neg)
    check_mask(neg, neg_mask)
    B, N = neg.shape
    cand = torch.cat([pos.detach().unsqueeze(1), neg.detach()], dim=1)  # [B, N + 1]
    if neg_mask is None:
        m = torch.full((B,), float(N + 1), dtype=cand.dtype, device=cand.device)
    else:
        cand = cand.masked_fill(~torch.cat([neg_mask.new_ones(B, 1), neg_mask], dim=1), float("-inf"))
        m = (neg_mask.sum(dim=1) + 1).to(cand.dtype)
    scaled = quantile == "catalogue" and n_items is not None
    if scaled:
        r = (k * m / n_items).clamp(min=1.0)
        top = math.ceil(k * (N + 1) / n_items) + 1  # an upper bound on every ceil(r_b), host-side
    else:
        r = torch.full_like(m, float(k))
        top = k
    r = torch.minimum(r, m)
    top = max(1, min(top, N + 1))
    # Descending; masked candidates (-inf) come last, after the M_b valid ones.
    vals = torch.topk(cand, top, dim=1).values if top < N + 1 else cand.sort(dim=1, descending=True).values
    lo = r.floor()
    frac = r - lo
    i_lo = (lo.long() - 1).clamp(0, top - 1).unsqueeze(1)
    i_hi = lo.long().clamp(0, top - 1).unsqueeze(1)
    v_lo = vals.gather(1, i_lo).squeeze(1)
    v_hi = vals.gather(1, i_hi).squeeze(1)
    # frac > 0 only when r_b < M_b, so the next rank is a valid candidate; where frac == 0 the
    # next entry may be -inf and is not used (torch.where, no 0 * inf).
    return torch.where(frac > 0, v_lo + frac * (v_hi - v_lo), v_lo)


def slk_loss(
    pos: Tensor,
    neg: Tensor,
    tau: float,
    k: int,
    tau_w: float,
    n_items: Optional[int] = None,
    quantile: str = "sample",
    detach_weight: bool = False,
    neg_mask: Optional[Tensor] = None,
) -> Tensor:
    """SL@K per row (no reduction):
    ``l_b = sigmoid((s_p - beta_b) / tau_w) * logsumexp_j((s_n[j] - s_p) / tau)`` with beta_b from
    `slk_quantile` (no gradient). ``detach_weight`` also stops the gradient through the weight.
    ``neg_mask`` ([B, N] bool, True = valid) leaves masked negatives out of the softmax and of the
    quantile; a row with no valid negative gives 0. Computed in log space (logsumexp); the
    weight is a sigmoid, bounded in [0, 1] at any tau_w.
    """
    beta = slk_quantile(pos, neg, k, n_items, quantile, neg_mask)
    weight = slk_weight(pos, beta, tau_w, detach_weight)
    sl = sl_loss(pos, neg, tau, neg_mask=neg_mask)  # checks the shapes and the mask; empty rows 0
    rows = None if neg_mask is None else any_per_row(neg_mask)
    return zero_empty_rows(weight * sl, rows)


def slk_weight(pos: Tensor, beta: Tensor, tau_w: float, detach: bool = False) -> Tensor:
    """w_b = sigmoid((s_p - beta_b) / tau_w), beta without gradient."""
    p = pos.detach() if detach else pos
    return torch.sigmoid((p - beta.detach()) / tau_w)


@LOSSES.register("SLK")
class SLKLoss(RecLoss):
    """SL@K: softmax loss with a per-row weight towards the user's top K (see the module
    docstring). Defaults are properties/loss/SLK.yaml's: the reference implementation's example
    configuration (tau 0.2, tau_w 2.25, K = 20)."""

    name = "SLK"
    params = {
        "tau": "loss_tau",
        "k": "slk_k",
        "tau_w": "slk_tau_w",
        "quantile": "slk_quantile",
        "detach_weight": "slk_detach_weight",
    }

    def __init__(self, tau: float = 0.2, k: int = 20, tau_w: float = 2.25, quantile: str = "sample",
                 detach_weight: bool = False):
        super().__init__()
        kw = self.check(dict(tau=tau, k=k, tau_w=tau_w, quantile=quantile, detach_weight=detach_weight))
        self.tau, self.k, self.tau_w = kw["tau"], kw["k"], kw["tau_w"]
        self.quantile, self.detach_weight = kw["quantile"], kw["detach_weight"]
        self._last = None  # (weight [B], beta [B], rows [B] or None), detached, for diagnostics

    @classmethod
    def check(cls, kwargs, neg_num=None):
        kw = dict(kwargs)
        kw["tau"] = check_positive("loss_tau", kw["tau"])
        kw["k"] = check_int("slk_k", kw["k"], 1, "an integer K >= 1 (the K of NDCG@K)")
        kw["tau_w"] = check_positive("slk_tau_w", kw["tau_w"])
        kw["quantile"] = check_choice("slk_quantile", kw["quantile"], QUANTILES)
        kw["detach_weight"] = check_bool("slk_detach_weight", kw["detach_weight"])
        # With the sample estimate, beta is the K-th of 1 + neg_num candidates: a larger K would
        # always give the row's smallest score. (The catalogue estimate rescales K, any K works.)
        if kw["quantile"] == "sample" and neg_num is not None and kw["k"] > neg_num + 1:
            raise ConfigError("slk_k", kw["k"], f"an integer in [1, neg_num + 1 = {neg_num + 1}] with "
                                                f"slk_quantile: sample",
                              hint="the sample quantile is the K-th largest of the positive and its neg_num "
                                   "negatives; raise neg_num or use slk_quantile: catalogue")
        return kw

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        n_items = getattr(ctx, "n_items", None)
        beta = slk_quantile(pos, neg, self.k, n_items, self.quantile, ctx.neg_mask)
        weight = slk_weight(pos, beta, self.tau_w, self.detach_weight)
        rows = None if ctx.neg_mask is None else any_per_row(ctx.neg_mask)
        self._last = (weight.detach(), beta, rows)
        return zero_empty_rows(weight * sl_loss(pos, neg, self.tau, neg_mask=ctx.neg_mask), rows)

    def diagnostics(self) -> Dict[str, Tensor]:
        """Last batch: mean weight, share of rows whose positive is at or above its estimated
        top-K threshold (weight >= 1/2), mean threshold; over the rows with a valid negative."""
        if self._last is None:
            return {}
        w, beta, rows = self._last
        if rows is not None:
            if not bool(rows.any()):
                return {}
            w, beta = w[rows], beta[rows]
        return dict(slk_w_mean=w.float().mean(), slk_top_share=(w >= 0.5).float().mean(),
                    slk_beta_mean=beta.float().mean())

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, k={self.k}, tau_w={self.tau_w}, quantile={self.quantile!r}, "
                f"detach_weight={self.detach_weight}")
