"""PSL: pairwise softmax loss (Yang et al., NeurIPS 2024, arXiv 2411.00163)."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from recbole_dsl.checks import check_choice, check_positive
from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, masked_logsumexp, prepare_mask, zero_empty_rows
from recbole_dsl.losses.full import AllItems, row_lse_all
from recbole_dsl.losses.sl import check_scores

# The user-facing activations sigma(d), d = (s_n - s_p) / 2 in [-1, 1] for cosine scores.
ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": lambda d: torch.tanh(d) + 1,
    "atan": lambda d: torch.atan(d) + 1,
    "relu": lambda d: torch.clamp(d + 1, min=0),
}
# exp turns PSL back into SL at temperature 2 * tau; kept only to test that identity.
_ALL_ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {**ACTIVATIONS, "exp": torch.exp}


def _check_activation(activation) -> str:
    return check_choice("psl_activation", activation, sorted(ACTIVATIONS))


def _sigma_and_ratio(d: Tensor, activation: str) -> Tuple[Tensor, Tensor]:
    """(sigma(d), sigma'(d) / sigma(d)), elementwise, each a fresh tensor; d may be overwritten."""
    if activation == "tanh":  # sigma = 1 + t, sigma' = (1 - t)(1 + t): the ratio is 1 - t
        t = d.tanh_()
        sigma = t + 1
        return sigma, t.neg_().add_(1)
    if activation == "atan":  # sigma' = 1 / (1 + d^2)
        sigma = torch.atan(d).add_(1)
        return sigma, d.square_().add_(1).mul_(sigma).reciprocal_()
    if activation == "relu":  # sigma = d + 1 where positive, sigma' = 1 there
        sigma = d.add_(1).clamp_min_(0)
        return sigma, sigma.reciprocal()
    sigma = d.exp_()  # "exp", the SL identity
    return sigma, torch.ones_like(sigma)


class _PairwiseLSE(torch.autograd.Function):
    """[B] ``logsumexp_j(log sigma((neg_j - pos) / 2) / tau)`` over the valid entries, with an
    analytic backward: d l / d neg_j = softmax_j * sigma'/sigma (d_j) / (2 tau), d l / d pos =
    -sum_j of it. Composed from torch ops the same loss made about twice the passes over the
    [B, N] block (every op's intermediate saved, and as many again in backward)."""

    @staticmethod
    def forward(ctx, neg: Tensor, pos: Tensor, tau: float, activation: str, mask: Optional[Tensor]):
        d = (neg - pos.unsqueeze(1)).mul_(0.5)
        sigma, ratio = _sigma_and_ratio(d, activation)
        tiny = torch.finfo(sigma.dtype).tiny
        # the clamp at tiny (relu reaches 0) passes no gradient, as torch.clamp's backward
        clamped = sigma < tiny
        ratio.masked_fill_(clamped, 0.0)
        z = sigma.clamp_min_(tiny).log_().mul_(1.0 / tau)
        if mask is not None:
            z.masked_fill_(~mask, float("-inf"))
        m = z.amax(dim=1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no valid entry
        e = z.sub_(m).exp_()
        s = e.sum(dim=1, keepdim=True)
        ctx.save_for_backward(e, s, ratio)
        ctx.scale = 0.5 / tau
        return (s.log() + m).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        e, s, ratio = ctx.saved_tensors
        coef = torch.where(s > 0, grad.unsqueeze(1) / s, torch.zeros_like(s)) * ctx.scale
        g_neg = torch.mul(ratio, e).mul_(coef)  # not in place: a retained graph may run backward again
        return g_neg, -g_neg.sum(dim=1), None, None, None


def psl_loss(pos: Tensor, neg: Tensor, tau: float, activation: str = "tanh",
             neg_mask: Optional[Tensor] = None) -> Tensor:
    """Pairwise softmax, per row (no reduction), PSL paper (arXiv 2411.00163):
    ``d_j = (s_n[j] - s_p) / 2``, ``l_b = logsumexp_j(log sigma(d_j) / tau) = log sum_j sigma(d_j)^(1/tau)``
    with sigma in {tanh(d)+1, atan(d)+1, max(d+1, 0)}; sigma is clamped at the dtype's tiny
    floor before the log (relu reaches 0 at d = -1).

    tau is in the paper's halved convention: sigma = exp gives SL at temperature 2 * tau.
    ``neg_mask`` ([B, N] bool, True = valid) leaves masked negatives out of the sum; a row with no
    valid negative gives 0.
    """
    if activation not in _ALL_ACTIVATIONS:
        _check_activation(activation)
    check_scores(pos, neg)
    mask, rows = prepare_mask(neg, neg_mask)
    if torch.is_grad_enabled() and (neg.requires_grad or pos.requires_grad):
        lse = _PairwiseLSE.apply(neg, pos.to(neg.dtype), float(tau), activation, mask)
    else:
        with torch.no_grad():
            lse = masked_logsumexp(_log_sigma_over_tau(neg, pos.unsqueeze(1), tau, activation), mask, dim=1)
    return zero_empty_rows(lse, rows)


def _log_sigma_over_tau(neg: Tensor, pos: Tensor, tau: float, activation: str) -> Tensor:
    """log sigma((s_n - s_p) / 2) / tau, elementwise (pos broadcast against neg)."""
    sigma = _ALL_ACTIVATIONS[activation]((neg - pos) / 2)
    sigma = torch.clamp(sigma, min=torch.finfo(sigma.dtype).tiny)
    return torch.log(sigma) / tau


@LOSSES.register("PSL")
class PSLLoss(RecLoss):
    """Pairwise softmax (see `psl_loss`); tau in the paper's halved convention."""

    name = "PSL"
    supports_all = True
    params = {"tau": "loss_tau", "activation": "psl_activation"}

    def __init__(self, tau: float = 0.05, activation: str = "tanh"):
        super().__init__()
        kw = self.check(dict(tau=tau, activation=activation))
        self.tau, self.activation = kw["tau"], kw["activation"]

    @classmethod
    def check(cls, kwargs, neg_num=None):
        return dict(kwargs, tau=check_positive("loss_tau", kwargs["tau"]),
                    activation=_check_activation(kwargs["activation"]))

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        return psl_loss(pos, neg, self.tau, self.activation, ctx.neg_mask)

    def compute_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems) -> Tensor:
        tau, activation = self.tau, self.activation
        lse = row_lse_all(u, items, lambda s, p: _log_sigma_over_tau(s, p, tau, activation), (pos,),
                          **all_items.scan_kw)
        return zero_empty_rows(lse, all_items.rows)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, activation={self.activation!r}"
