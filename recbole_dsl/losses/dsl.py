"""DSL: dual-scale softmax (Sahyouni et al., arXiv 2602.07206), as read in docs/dsl.md.

Two stop-gradient branches on the log-sum-exp backbone of SL, per row b with
``d_j = s_n[j] - s_p``:

* reweighting (``kappa != 0``): ``a_j = alpha * s_n[j] + (1 - alpha) * cos(p, n_j)``,
  ``w_j = N * softmax_j(kappa * a_j)`` (mean one per row), optionally capped at ``max_weight``;
  with a false-negative threshold t, ``a_j`` is first folded at t, ``min(a_j, 2 t - a_j)``, so
  the weight grows with the affinity up to t and falls beyond it (see `fold_affinity`);
* competition-aware temperature (``gamma != 0``): the slate is the K highest-scoring negatives
  (or, with ``slate_source="catalogue"``, the K highest-scoring items of the whole catalogue that
  are not the user's positives, handed over by the score path),
  ``I_b = mean_slate sigmoid(d_j / tau)``, ``z_b`` its batch standardisation,
  ``tau_b = tau * exp(gamma * z_b)`` clipped to ``[tau / rho, tau * rho]``, then rescaled so the
  batch's geometric mean of ``tau_b`` is ``tau``;

and the loss ``l_b = logsumexp_j(d_j / tau_b + log w_j) - log N``. Everything is computed in log
space. The paper's exact formulas are not available; every choice here is a config option.

Two choices the spec leaves open, made here:

* Weight cap: the capped weights are the exact "water-filling" solution
  ``w_j = min(c * w0_j, max_weight)`` with the per-row ``c`` chosen so the row's mean is exactly 1
  (found with one sort per row, no iteration). This is the fixed point that repeated
  clip-then-renormalise converges to, so both properties hold exactly: mean 1 and max <= cap.
  It needs ``max_weight >= 1`` (otherwise mean one is unreachable), which the module enforces.
* Temperature clip: clip once, then rescale once (as the spec says). The rescale is a common
  per-batch factor, so a value that sat on a clip bound can end up slightly outside
  ``[tau / rho, tau * rho]``; the geometric mean is always exactly ``tau``. When the clip does not
  bind the rescale is a no-op (the standardised z has batch mean 0).

Cost: no Python loop over rows; the weights are kept as (u, o) with log w = u + o[:, None] so the
per-row normaliser is added after the logsumexp, so is the positive's logit s_p / tau_b (no [B, N]
difference under autograd), the slate intensity computes d_j / tau in one pass without autograd,
and a top-K runs once when K < N. The recommender asks the score path for the reweighting's
``a = alpha * s_n + (1 - alpha) * cos(p, n)`` ready-mixed (``affinity``; with cosine scores that is
one product with the query ``lerp(p, u, alpha)``), so the loss does not mix two [B, N] blocks.
The weight cap adds a per-row sort and a logcumsumexp: cheap on a GPU,
noticeable on CPU (about 150 ms for B = 2048, N = 1000 on one core), which is why it is off by default.
"""
from __future__ import annotations

import math
from logging import getLogger
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from recbole_dsl.checks import (
    MAX_STRENGTH, check_bool, check_choice, check_int, check_positive, check_real, check_strength,
)
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, ScoreNeeds, prepare_mask
from recbole_dsl.losses.lse import scaled_logsumexp
from recbole_dsl.losses.full import (
    AllItems, cap_log_scale_all, row_lse_all, row_stats_all, row_sum_all, row_topk_all,
)


# How strongly a row's slate competes with its positive, from the slate's scaled margins
# x_j = (s_n[j] - s_p) / tau: the mean sigmoid (soft count of negatives above the positive), the
# log-mean-exp (a soft maximum), or the mean margin itself (linear in the scores).
INTENSITIES = ("sigmoid", "lse", "margin")
# Where the competitor slate comes from: the row's sampled negatives, or the whole catalogue's
# highest-scoring non-positive items (the score path computes them: ScoreNeeds.catalogue_slate).
SLATE_SOURCES = ("negatives", "catalogue")


def slate_intensity(x: Tensor, valid: Optional[Tensor] = None, measure: str = "sigmoid",
                    own: bool = False, count: Optional[Tensor] = None) -> Tensor:
    """I_b [B] of the scaled margins x [B, K]; ``valid`` [B, K] bool marks the slate's entries
    (None: all). A row without an entry gives 0. ``own``: x may be overwritten. ``count`` [B]:
    ``valid.sum(dim=1)`` when the caller has it already."""
    if measure not in INTENSITIES:
        raise ConfigError("dsl_intensity", measure, f"one of {', '.join(INTENSITIES)}")
    k = x.shape[1]
    if valid is None:
        if measure == "lse":
            return torch.logsumexp(x, dim=1) - math.log(k)
        return (x.sigmoid_() if own else x.sigmoid()).mean(dim=1) if measure == "sigmoid" else x.mean(dim=1)
    count = valid.sum(dim=1) if count is None else count
    # torch.where, not masked_fill(~valid): no negated mask and one pass fewer over the [B, K] block
    if measure == "lse":
        lme = torch.logsumexp(torch.where(valid, x, float("-inf")), dim=1) - torch.log(count.clamp_min(1).to(x.dtype))
        return torch.where(count > 0, lme, torch.zeros_like(lme))
    f = (x.sigmoid_() if own else x.sigmoid()) if measure == "sigmoid" else x
    return torch.where(valid, f, 0.0).sum(dim=1) / count.clamp_min(1).to(x.dtype)


def fold_affinity(a: Tensor, threshold: Optional[float], own: bool = False) -> Tensor:
    """``min(a, 2 t - a)``: the reweighting's affinity folded at the false-negative threshold t.

    Negatives up to t keep their affinity (harder = heavier with kappa > 0); those beyond it are
    taken as likely false negatives (nearly the positive itself) and lose weight as fast as they
    gained it, so one at ``t + e`` weighs what one at ``t - e`` does. None: no fold.
    ``own``: a may be overwritten."""
    if threshold is None:
        return a
    reflected = 2.0 * threshold - a
    return torch.minimum(a, reflected, out=a) if own else torch.minimum(a, reflected)


def _check_scores(pos: Tensor, neg: Tensor) -> None:
    if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0] or neg.shape[1] == 0:
        raise ValueError(
            f"expected pos [B] and neg [B, N>=1] scores, got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )


@torch.no_grad()
def _log_weights(
    neg: Tensor, item_sim: Optional[Tensor], kappa: float, alpha: float, max_weight: Optional[float],
    mask: Optional[Tensor] = None, n_valid: Optional[Tensor] = None, affinity: Optional[Tensor] = None,
    fn_threshold: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """Log weights as (u [B, N], o [B]) with log w = u + o[:, None]; no gradient.

    exp(log w) has mean one per row (and max <= max_weight if set). Keeping the per-row
    normaliser o separate lets the loss add it after the logsumexp (one [B, N] pass fewer).
    With a mask, masked entries get log w = -inf and the mean one is over the valid entries
    (n_valid [B] of them). ``affinity`` [B, N], when given, is ``a`` already mixed
    (``alpha * s_n + (1 - alpha) * cos(p, n)``, see `mix_affinity`); ``item_sim`` is then unused.
    ``fn_threshold`` folds a there first (`fold_affinity`).
    """
    n = neg.shape[1]
    if affinity is not None:
        if affinity.shape != neg.shape:
            raise ValueError(f"affinity must have the shape of neg {tuple(neg.shape)}, got {tuple(affinity.shape)}")
        a = affinity.detach().to(neg.dtype)
        if mask is not None and fn_threshold is None:
            # mask and scale in two passes over one fresh block; the fill is -inf once scaled
            u = torch.where(mask, a, float("-inf") if kappa > 0 else float("inf")).mul_(kappa)
            mask = None  # already applied
        else:
            u = fold_affinity(a, fn_threshold) * kappa
    elif alpha >= 1.0:
        a = neg.detach()
    else:
        if item_sim is None:
            raise ValueError(
                "dsl_loss: item_sim [B, N] (positive-to-negative item similarity) is required "
                f"when kappa != 0 and alpha < 1 (got kappa={kappa}, alpha={alpha})"
            )
        if item_sim.shape != neg.shape:
            raise ValueError(f"item_sim must have the shape of neg {tuple(neg.shape)}, got {tuple(item_sim.shape)}")
        sim = item_sim.detach().to(neg.dtype)
        a = torch.lerp(sim, neg.detach(), alpha) if alpha > 0 else sim
    if affinity is None:
        # a is a fresh [B, N] tensor when alpha is in (0, 1): fold and scale it in place
        fresh = 0 < alpha < 1
        a = fold_affinity(a, fn_threshold, own=fresh)
        fresh = fresh or fn_threshold is not None
        u = a.mul_(kappa) if fresh else kappa * a
    if mask is not None:
        u = u.masked_fill_(~mask, float("-inf"))  # u is this function's own tensor
    # log w = log(N * softmax(u)), N the row's valid count
    o = (math.log(n) if n_valid is None else torch.log(n_valid.to(u.dtype))) - _row_logsumexp(u)
    if max_weight is not None and max_weight < n:  # a weight never exceeds N
        u = _cap_log_weights(u + o.unsqueeze(1), float(max_weight), n_valid)
        o = torch.zeros_like(o)
    return u, o


def _row_logsumexp(u: Tensor) -> Tensor:
    """torch.logsumexp(u, dim=1) with one scratch block instead of two (rows all -inf give -inf)."""
    m = u.amax(dim=1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (u - m).exp_().sum(dim=1).log_().add_(m.squeeze(1))


def _cap_log_weights(log_w: Tensor, cap: float, n_valid: Optional[Tensor] = None) -> Tensor:
    """Exact water-filling in log space: w = min(c * w0, cap) with c per row such that mean(w) = 1.

    Sorted descending v_0 >= v_1 >= ..., clipping the top k entries needs
    c_k = (N - k * cap) / sum_{i >= k} exp(v_i); the answer is the smallest k with
    c_k * exp(v_k) <= cap (k = 0: nothing to clip, c = 1). Requires cap >= 1.
    With ``n_valid`` [B] (masked entries are -inf and sort last) N is each row's valid count.
    """
    n = log_w.shape[1]
    log_cap = math.log(cap)
    v = torch.sort(log_w, dim=1, descending=True).values
    # log of the suffix sums sum_{i >= k} exp(v_i)
    log_suffix = torch.logcumsumexp(v.flip(1), dim=1).flip(1)
    k = torch.arange(n, device=log_w.device, dtype=log_w.dtype)
    budget = (n if n_valid is None else n_valid.to(log_w.dtype).unsqueeze(1)) - k * cap  # N - k * cap, must stay > 0
    log_c = torch.log(budget.clamp_min(torch.finfo(log_w.dtype).tiny)) - log_suffix
    tol = 8 * torch.finfo(log_w.dtype).eps * max(1.0, abs(log_cap))
    valid = (log_c + v <= log_cap + tol) & (budget > 0)
    valid[:, -1] = True  # fallback (only reachable through rounding)
    k_star = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid k
    log_c_star = log_c.gather(1, k_star)
    return torch.clamp_max(log_w + log_c_star, log_cap)


@torch.no_grad()
def _log_temperatures(
    pos: Tensor, neg: Tensor, tau: float, slate_size: Optional[int], gamma: float, tau_range: float,
    eps: float, mask: Optional[Tensor] = None, rows: Optional[Tensor] = None, measure: str = "sigmoid",
    slate: Optional[Tensor] = None, n_valid: Optional[Tensor] = None,
) -> Tensor:
    """log tau_b [B], no gradient: competition-aware per-row temperatures, geometric mean tau.

    With a mask the slate is the min(K, valid) highest-scoring valid negatives, and the batch
    statistics (standardisation, geometric mean) run over the rows with a valid negative
    (``rows``); the other rows get tau (their loss is discarded). ``slate`` [B, K] (-inf where a
    row has fewer entries), when given, is the slate's scores instead of the top of ``neg``.
    ``n_valid`` [B]: the mask's row counts, when the caller has them."""
    b, n = neg.shape
    if slate is not None:
        if slate.dim() != 2 or slate.shape[0] != b:
            raise ValueError(f"slate must be [B={b}, K] scores, got {tuple(slate.shape)}")
        top = slate.detach().to(neg.dtype)
        in_slate = torch.isfinite(top)
        x = (top.masked_fill(~in_slate, 0.0) - pos.detach().unsqueeze(1)) * (1.0 / tau)
        intensity = slate_intensity(x, in_slate, measure)
        rows = torch.ones(b, dtype=torch.bool, device=neg.device) if rows is None else rows
        return _log_temperatures_of(intensity, tau, gamma, tau_range, eps, rows)
    log_tau = math.log(tau)
    k = n if slate_size is None else int(slate_size)
    if mask is not None:
        k = min(k, n)  # masked rows use min(K, valid negatives) anyway (in_batch: N is the batch size)
    if not 1 <= k <= n:
        raise ConfigError("dsl_slate_size", slate_size, f"an integer in [1, neg_num={n}]")
    if mask is None:
        if b == 1:  # z = 0 for a single row
            return neg.new_full((1,), log_tau)
        # the K highest-scoring negatives = the K largest d_j (s_p is fixed per row)
        slate = neg.detach() if k == n else torch.topk(neg.detach(), k, dim=1, sorted=False).values
        # d_j / tau = s_n[j] / tau - s_p / tau in one broadcast pass, straight from the scores
        scaled = torch.add((pos.detach() * (-1.0 / tau)).unsqueeze(1), slate, alpha=1.0 / tau)
        intensity = slate_intensity(scaled, None, measure, own=True)
        mean = intensity.mean()
        std = intensity.std(unbiased=False)
        z = (intensity - mean) / (std + eps)
        log_rho = math.log(tau_range)
        log_tau_b = torch.clamp(log_tau + gamma * z, log_tau - log_rho, log_tau + log_rho)
        # rescale after the clip so that the batch's geometric mean is exactly tau
        return log_tau_b - (log_tau_b.mean() - log_tau)
    if k == n:
        d = torch.sub(neg.detach(), pos.detach().unsqueeze(1)).mul_(1.0 / tau)
        intensity = slate_intensity(d, mask, measure, own=True, count=n_valid)
    else:
        top = torch.topk(torch.where(mask, neg.detach(), float("-inf")), k, dim=1, sorted=False).values
        in_slate = torch.isfinite(top)
        intensity = slate_intensity((top - pos.detach().unsqueeze(1)) * (1.0 / tau), in_slate, measure)
    return _log_temperatures_of(intensity, tau, gamma, tau_range, eps, rows)


def _log_temperatures_of(intensity: Tensor, tau: float, gamma: float, tau_range: float, eps: float,
                         rows: Tensor) -> Tensor:
    """log tau_b [B] from the slate intensities I_b, batch statistics over ``rows`` [B] bool (the
    other rows get tau; their intensity must be finite)."""
    log_tau = math.log(tau)
    w = rows.to(intensity.dtype)
    count = w.sum().clamp_min(1)
    mean = (intensity * w).sum() / count
    std = torch.sqrt((((intensity - mean) ** 2) * w).sum() / count)
    z = torch.where(rows, (intensity - mean) / (std + eps), torch.zeros_like(intensity))
    log_rho = math.log(tau_range)
    log_tau_b = torch.clamp(log_tau + gamma * z, log_tau - log_rho, log_tau + log_rho)
    shift = ((log_tau_b * w).sum() / count - log_tau) * (w.sum() > 1)  # one valid row: z = 0 already
    return torch.where(rows, log_tau_b - shift, torch.full_like(log_tau_b, log_tau))


def _dsl_parts(
    pos: Tensor,
    neg: Tensor,
    tau: float,
    item_sim: Optional[Tensor],
    kappa: float,
    alpha: float,
    slate_size: Optional[int],
    gamma: float,
    tau_range: float,
    max_weight: Optional[float],
    eps: float,
    neg_mask: Optional[Tensor] = None,
    affinity: Optional[Tensor] = None,
    intensity: str = "sigmoid",
    fn_threshold: Optional[float] = None,
    slate: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tuple[Tensor, Tensor]]]:
    """(per-row loss [B], log tau_b [B] or None, (u [B, N], o [B]) or None); None = branch inactive.
    The log weights are u + o[:, None] (see `_log_weights`). With ``neg_mask`` masked negatives
    are left out of the logsumexp, the weights (mean one over the valid ones), the slate and N."""
    _check_scores(pos, neg)
    n = neg.shape[1]
    mask, rows = prepare_mask(neg, neg_mask)
    n_valid = None if mask is None else mask.sum(dim=1)
    log_w = (_log_weights(neg, item_sim, kappa, alpha, max_weight, mask, n_valid, affinity, fn_threshold)
             if kappa != 0 else None)
    log_tau_b = (_log_temperatures(pos, neg, tau, slate_size, gamma, tau_range, eps, mask, rows, intensity, slate,
                                   n_valid)
                 if gamma != 0 else None)
    inv_tau = None if log_tau_b is None else torch.exp(-log_tau_b)
    log_n = math.log(n) if mask is None else torch.log(n_valid.to(neg.dtype))
    # logsumexp_j((s_n[j] - s_p) / tau_b + log w_j) == logsumexp_j(s_n[j] / tau_b + log w_j) - s_p / tau_b:
    # the positive is subtracted after the reduction (no [B, N] difference, forward or backward).
    pos_logit = pos / tau if inv_tau is None else pos * inv_tau
    scale = 1.0 / tau if inv_tau is None else inv_tau.unsqueeze(1)
    if log_w is None:
        loss = scaled_logsumexp(neg, scale, None, mask) - pos_logit - log_n
    else:
        u, o = log_w  # u is already -inf at masked entries
        loss = scaled_logsumexp(neg, scale, u, None, offset_scale=-1.0) - pos_logit + (o - log_n)
    if rows is not None:
        loss = torch.where(rows, loss, torch.zeros_like(loss))
    return loss, log_tau_b, log_w


def dsl_loss(
    pos: Tensor,
    neg: Tensor,
    tau: float,
    item_sim: Optional[Tensor] = None,
    kappa: float = 0.0,
    alpha: float = 0.5,
    slate_size: Optional[int] = None,
    gamma: float = 0.0,
    tau_range: float = 3.0,
    max_weight: Optional[float] = None,
    eps: float = 1e-6,
    return_stats: bool = False,
    neg_mask: Optional[Tensor] = None,
    affinity: Optional[Tensor] = None,
    intensity: str = "sigmoid",
    fn_threshold: Optional[float] = None,
    slate: Optional[Tensor] = None,
):
    """Dual-scale softmax, per row (no reduction):
    ``l_b = logsumexp_j((s_n[j] - s_p) / tau_b + log w_j) - log N``.

    ``kappa = 0`` turns the reweighting off (w = 1), ``gamma = 0`` the temperature branch
    (tau_b = tau); with both off this is SL minus log N. ``item_sim`` [B, N] (similarity of the
    row's positive item to each negative) is needed when ``kappa != 0`` and ``alpha < 1``.
    ``slate_size=None`` uses all N negatives as the slate. No gradient flows through w or tau_b.
    ``affinity`` [B, N] may replace ``item_sim``: the reweighting's ``a`` already mixed,
    ``alpha * s_n + (1 - alpha) * cos(p, n)`` (the score path can produce it with one product,
    see recbole_dsl.scoring.batch_scores); ``alpha`` is then not used.
    ``intensity`` (see `slate_intensity`) is the slate's competition measure behind tau_b.
    ``fn_threshold`` (None: off) folds the reweighting's affinity at that value (`fold_affinity`):
    negatives beyond it are taken as likely false negatives and down-weighted.
    ``slate`` [B, K] (-inf padded; None: the top ``slate_size`` of ``neg``) is the competitor
    slate's scores, e.g. the whole catalogue's highest-scoring non-positive items.
    ``neg_mask`` ([B, N] bool, True = valid): masked negatives take no part (logsumexp, weights,
    slate, N); a row with no valid negative gives 0 and is left out of the batch statistics.

    With ``return_stats=True`` returns ``(loss, {"tau_b": [B], "w": [B, N]})``, both detached
    (constant tau / ones for an inactive branch).
    """
    loss, log_tau_b, log_w = _dsl_parts(
        pos, neg, tau, item_sim, kappa, alpha, slate_size, gamma, tau_range, max_weight, eps, neg_mask, affinity,
        intensity, fn_threshold, slate,
    )
    if not return_stats:
        return loss
    tau_b = neg.new_full((neg.shape[0],), float(tau)) if log_tau_b is None else log_tau_b.exp()
    w = torch.ones_like(neg, requires_grad=False) if log_w is None else (log_w[0] + log_w[1].unsqueeze(1)).exp()
    return loss, {"tau_b": tau_b.detach(), "w": w.detach()}


def _full_weight_summary(
    u: Tensor, items: Tensor, all_items: AllItems, affinity, aux, shift: Tensor, log_cap: Optional[float],
    a_min: Tensor, a_max: Tensor,
) -> Callable[[], Tuple[Tensor, ...]]:
    """A function giving (log min, log median, log max) of compute_all's weights over the valid
    (row, item) pairs, run only when diagnostics are asked for. log w = kappa * a + shift (capped
    at log_cap) is monotone in kappa * a, so min and max come from its per-row extremes; the
    median is over an evenly strided sample of item columns (at most _MEDIAN_SAMPLE weights, all
    of them for small batches)."""
    u, items, shift = u.detach(), items.detach(), shift.detach()

    def log_w(a: Tensor) -> Tensor:
        return a if log_cap is None else torch.clamp_max(a, log_cap)

    @torch.no_grad()
    def summary() -> Tuple[Tensor, ...]:
        rows = all_items.rows
        if not bool(rows.any()):
            nan = shift.new_tensor(float("nan"))
            return nan, nan, nan
        first, b = all_items.first_item, u.shape[0]
        step = max(1, -(-b * (items.shape[0] - first) // _MEDIAN_SAMPLE))
        ids = torch.arange(first, items.shape[0], step, device=u.device)
        extra = () if aux is None else (aux[0] @ aux[1][ids].T,)
        sample = log_w(affinity(u @ items[ids].T, *extra) + shift.unsqueeze(1))
        valid = ~all_items.excluded.mask(b, ids) & rows.unsqueeze(1)
        return (log_w(a_min + shift)[rows].min(), sample[valid].median(), log_w(a_max + shift)[rows].max())

    return summary


# dsl_w_median is taken over at most this many of the batch's B * N weights (an exact median of
# 2M values would cost more than the loss itself).
_MEDIAN_SAMPLE = 1 << 16


@LOSSES.register("DSL")
class DSLLoss(RecLoss):
    """Dual-scale softmax (see `dsl_loss`).

    ``reweight=False`` / ``temperature=False`` are ablation switches: that branch is off
    (kappa, resp. gamma, treated as 0). When the reweighting branch is active with ``alpha < 1``
    the loss declares ``needs = ScoreNeeds(affinity_alpha=alpha)``: the score path hands it
    ``ctx.neg_affinity = alpha * s_n + (1 - alpha) * cos(p, n)`` (from Python, build it with
    `recbole_dsl.scoring.mix_affinity`). With ``alpha == 1`` (hardness only) nothing is needed.

    ``diagnostics()`` reports the last batch's temperature spread (``dsl_tau_min/median/max``)
    only when the temperature branch is active, and the weight spread (``dsl_w_min/median/max``)
    only when the reweighting branch is active: an inactive branch's figures are constants
    (tau, 1) and are left out rather than logged. The weight min / max are exact; the weight
    median is over an evenly strided sample of at most 65536 of the B * N weights (exact for
    smaller batches).

    ``compute_all`` is the same loss with every valid item of the catalogue as a negative
    (neg_sampler: all), over item blocks; every branch and the weight cap included, and the
    diagnostics too (the weight median over a strided sample of item columns).
    """

    name = "DSL"
    supports_all = True
    params = {
        "tau": "loss_tau",
        "kappa": "dsl_kappa",
        "alpha": "dsl_alpha",
        "slate_size": "dsl_slate_size",
        "gamma": "dsl_gamma",
        "tau_range": "dsl_tau_range",
        "max_weight": "dsl_max_weight",
        "reweight": "dsl_reweight",
        "temperature": "dsl_temperature",
        "intensity": "dsl_intensity",
        "fn_threshold": "dsl_fn_threshold",
        "slate_source": "dsl_slate_source",
    }

    # Defaults are properties/loss/DSL.yaml's (the validation choice, BENCHMARKS.md "DSL versus SL").
    def __init__(
        self,
        tau: float = 0.3,
        kappa: float = 2.0,
        alpha: float = 0.5,
        slate_size: Optional[int] = None,
        gamma: float = 0.0,
        tau_range: float = 3.0,
        max_weight: Optional[float] = None,
        reweight: bool = True,
        temperature: bool = True,
        intensity: str = "sigmoid",
        fn_threshold: Optional[float] = None,
        slate_source: str = "negatives",
    ):
        super().__init__()
        kw = self.check(dict(tau=tau, kappa=kappa, alpha=alpha, slate_size=slate_size, gamma=gamma,
                             tau_range=tau_range, max_weight=max_weight, reweight=reweight, temperature=temperature,
                             intensity=intensity, fn_threshold=fn_threshold, slate_source=slate_source))
        self.tau = kw["tau"]
        self.kappa = kw["kappa"]
        self.alpha = kw["alpha"]
        self.slate_size = kw["slate_size"]
        self.gamma = kw["gamma"]
        self.tau_range = kw["tau_range"]
        self.max_weight = kw["max_weight"]
        self.reweight = kw["reweight"]
        self.temperature = kw["temperature"]
        self.intensity = kw["intensity"]
        self.fn_threshold = kw["fn_threshold"]
        self.slate_source = kw["slate_source"]
        # effective strengths after the ablation switches
        self.eff_kappa = self.kappa if self.reweight else 0.0
        self.eff_gamma = self.gamma if self.temperature else 0.0
        uses_similarity = self.eff_kappa != 0 and self.alpha < 1
        from_catalogue = self.slate_source == "catalogue" and self.eff_gamma != 0
        inert = [f"{key}={val!r}" for key, val, default in (("dsl_slate_size", self.slate_size, None),
                                                            ("dsl_slate_source", self.slate_source, "negatives"),
                                                            ("dsl_intensity", self.intensity, "sigmoid"))
                 if val != default]
        if inert and self.eff_gamma == 0:
            # gamma 0 is the shipped default: a slate key set without it would otherwise do nothing, silently
            getLogger(__name__).warning(
                "DSL: the competition-aware temperature is off (dsl_gamma=%s, dsl_temperature=%s), so these keys "
                "have no effect: %s; a non-zero dsl_gamma (0.5 was the ml-100k search's point) turns it on",
                self.gamma, self.temperature, ", ".join(inert))
        self.needs = ScoreNeeds(affinity_alpha=self.alpha if uses_similarity else None,
                                catalogue_slate=self.slate_size if from_catalogue else None)
        self._last_log_tau_b: Optional[Tensor] = None
        self._last_log_w: Optional[Tuple[Tensor, Tensor]] = None
        self._last_masked = False
        # compute_all's weights: () -> (log min, log median, log max), see _full_weight_summary
        self._last_w_all: Optional[Callable[[], Tuple[Tensor, ...]]] = None

    @classmethod
    def check(cls, kwargs, neg_num=None):
        kw = dict(kwargs)
        kw["tau"] = check_positive("loss_tau", kw["tau"])
        kw["kappa"] = check_strength("dsl_kappa", kw["kappa"], "0 turns the reweighting off")
        kw["alpha"] = check_real("dsl_alpha", kw["alpha"], "a number in [0, 1]", lambda v: 0 <= v <= 1)
        kw["slate_source"] = check_choice("dsl_slate_source", kw.get("slate_source", "negatives"), SLATE_SOURCES)
        k = kw["slate_size"]
        if k is not None:
            check_int("dsl_slate_size", k, 1, "None (all negatives) or an integer >= 1")
            if neg_num is not None and k > neg_num and kw["slate_source"] == "negatives":
                raise ConfigError("dsl_slate_size", k, f"an integer in [1, neg_num={neg_num}]",
                                  hint="or dsl_slate_source: catalogue, a slate from the whole catalogue")
        elif kw["slate_source"] == "catalogue":
            raise ConfigError("dsl_slate_size", k, "an integer >= 1 with dsl_slate_source: catalogue",
                              hint="the slate is the K highest-scoring items of the catalogue; for every item "
                                   "use neg_sampler: all with dsl_slate_size: ~")
        kw["gamma"] = check_strength("dsl_gamma", kw["gamma"], "0 turns the temperature branch off")
        kw["tau_range"] = check_real("dsl_tau_range", kw["tau_range"], f"a number in [1, {MAX_STRENGTH:g}]",
                                     lambda v: 1 <= v <= MAX_STRENGTH)
        if kw["max_weight"] is not None:
            kw["max_weight"] = check_real("dsl_max_weight", kw["max_weight"], "None (no cap) or a number >= 1",
                                          lambda v: v >= 1)
        kw["reweight"] = check_bool("dsl_reweight", kw["reweight"])
        kw["temperature"] = check_bool("dsl_temperature", kw["temperature"])
        kw["intensity"] = check_choice("dsl_intensity", kw.get("intensity", "sigmoid"), INTENSITIES)
        if kw.get("fn_threshold") is not None:
            kw["fn_threshold"] = check_real("dsl_fn_threshold", kw["fn_threshold"],
                                            f"None (off) or a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}]",
                                            lambda v: abs(v) <= MAX_STRENGTH)
        else:
            kw["fn_threshold"] = None
        return kw

    def compute(self, pos: Tensor, neg: Tensor, ctx: LossContext) -> Tensor:
        alpha = self.needs.affinity_alpha
        if alpha is not None and ctx.neg_affinity is None:
            raise ValueError(
                "DSL: LossContext.neg_affinity (alpha * s_n + (1 - alpha) * cos(p, n), see "
                "recbole_dsl.scoring.mix_affinity) is required when dsl_kappa != 0 and dsl_alpha < 1"
            )
        loss, log_tau_b, log_w = _dsl_parts(
            pos, neg, self.tau, None, self.eff_kappa, self.alpha, self.slate_size,
            self.eff_gamma, self.tau_range, self.max_weight, 1e-6, ctx.neg_mask,
            ctx.neg_affinity if alpha is not None else None, self.intensity, self.fn_threshold,
            self._slate(ctx),
        )
        # keep references only (detached, no copies); the summaries are computed on demand
        self._last_log_tau_b = None if log_tau_b is None else log_tau_b.detach()
        self._last_log_w = log_w  # (u, o), both already detached
        self._last_masked = ctx.neg_mask is not None
        self._last_w_all = None
        return loss

    def _slate(self, ctx: LossContext) -> Optional[Tensor]:
        if self.needs.catalogue_slate is None:
            return None
        if ctx.slate is None:
            raise ValueError(
                "DSL: LossContext.slate (each row's dsl_slate_size highest-scoring catalogue items that are "
                "not its positives) is required with dsl_slate_source: catalogue"
            )
        return ctx.slate

    def compute_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems) -> Tensor:
        """`compute` with every valid item as a negative, in passes over item blocks (see
        recbole_dsl.losses.full): the slate (a top-K, or a sum over all items when K covers
        the catalogue; every item is a negative here, so both slate sources are the same), the weights' normaliser, the cap's scale (a few passes, only with
        max_weight), then the loss's logsumexp with its gradient. cos(p, j) comes from
        ``all_items.sim_table`` (needed when the reweighting uses it, alpha < 1)."""
        rows, kw = all_items.rows, all_items.scan_kw
        n_real = items.shape[0] - all_items.first_item
        log_n = torch.log(torch.where(rows, all_items.counts, torch.ones_like(all_items.counts)).to(u.dtype))
        log_tau_b = self._log_temperatures_all(u, items, pos, all_items, n_real) if self.eff_gamma != 0 else None
        inv_tau = pos.new_full(pos.shape, 1.0 / self.tau) if log_tau_b is None else torch.exp(-log_tau_b)
        pos_logit = pos / self.tau if log_tau_b is None else pos * inv_tau
        self._last_w_all = None
        if self.eff_kappa == 0:
            lse = row_lse_all(u, items, lambda s, it: s * it, (inv_tau,), **kw)
            loss = lse - pos_logit - log_n
        else:
            affinity, aux = self._affinity_all(all_items)
            lse_a, a_max, a_min = row_stats_all(u, items, affinity, aux=aux, **kw)
            o = log_n - lse_a  # log w0_j = kappa * a_j + o: mean one over the valid items
            cap = self.max_weight if self.max_weight is not None and self.max_weight < n_real else None
            if cap is None:
                shift, log_cap = o, None
                lse = row_lse_all(u, items, lambda s, it, *c: s * it + affinity(s.detach(), *c),
                                  (inv_tau,), aux=aux, **kw)
                loss = lse - pos_logit + (o - log_n)
            else:
                shift_w0 = o.unsqueeze(1)
                log_c = cap_log_scale_all(u, items, lambda s, *c: affinity(s, *c) + shift_w0, all_items.counts,
                                          cap, aux=aux, **kw)
                shift, log_cap = o + log_c, math.log(cap)
                def phi(s, it, sh, *c):
                    return s * it + torch.clamp_max(affinity(s.detach(), *c) + sh, log_cap)

                lse = row_lse_all(u, items, phi, (inv_tau, shift), aux=aux, **kw)
                loss = lse - pos_logit - log_n
            self._last_w_all = _full_weight_summary(u, items, all_items, affinity, aux, shift, log_cap, a_min, a_max)
        self._last_log_tau_b = None if log_tau_b is None else log_tau_b.detach()
        self._last_log_w = None
        self._last_masked = True
        return torch.where(rows, loss, torch.zeros_like(loss))

    def _affinity_all(self, all_items: AllItems):
        """(kappa * a as a block function of (scores[, cos]), aux for cos(p, j) or None); no gradient."""
        kappa, alpha, t = self.eff_kappa, self.alpha, self.fn_threshold
        if alpha >= 1:
            return (lambda s: kappa * fold_affinity(s.detach(), t)), None
        aux = all_items.sim_aux()
        if aux is None:
            raise ValueError(
                "DSL: AllItems.sim_table (the L2-normalised item table) and pos_item are required when "
                "dsl_kappa != 0 and dsl_alpha < 1"
            )
        # the same lerp as the sampled path's mix_affinity
        return (lambda s, cos: fold_affinity(torch.lerp(cos.to(s.dtype), s.detach(), alpha), t, own=True) * kappa), aux

    @torch.no_grad()
    def _log_temperatures_all(self, u: Tensor, items: Tensor, pos: Tensor, all_items: AllItems,
                              n_real: int) -> Tensor:
        kw, tau = all_items.scan_kw, self.tau
        k = n_real if self.slate_size is None else min(int(self.slate_size), n_real)
        p = pos.detach()
        if k >= n_real:  # the slate is every valid item
            count = all_items.counts.clamp_min(1)
            if self.intensity == "lse":
                lse = row_lse_all(u, items, lambda s, q: (s - q) * (1.0 / tau), (p,), **kw)
                intensity = lse - torch.log(count.to(lse.dtype))
            else:
                f = (lambda s, q: torch.sigmoid((s - q) * (1.0 / tau))) if self.intensity == "sigmoid" else \
                    (lambda s, q: (s - q) * (1.0 / tau))
                total = row_sum_all(u, items, f, (p,), **kw)
                intensity = total / count.to(total.dtype)
        else:
            top = row_topk_all(u, items, k, **kw)
            intensity = slate_intensity((top - p.unsqueeze(1)) * (1.0 / tau), torch.isfinite(top), self.intensity)
        return _log_temperatures_of(intensity, tau, self.eff_gamma, self.tau_range, 1e-6, all_items.rows)

    def diagnostics(self) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        if self._last_log_tau_b is not None:
            t = self._last_log_tau_b.float().exp()
            out.update(dsl_tau_min=t.min(), dsl_tau_median=t.median(), dsl_tau_max=t.max())
        if self._last_w_all is not None:
            lo, mid, hi = (v.float().exp() for v in self._last_w_all())
            out.update(dsl_w_min=lo, dsl_w_median=mid, dsl_w_max=hi)
        if self._last_log_w is not None:
            u, o = self._last_log_w
            # masked negatives (log w = -inf) are not weights: left out of the min and the median
            u_min = u.masked_fill(torch.isneginf(u), float("inf")) if self._last_masked else u
            # min / max exact from row reductions, without materialising the [B, N] weights
            # (two reductions: torch.aminmax over dim 1 measured 4x slower than both on CPU)
            w_min = (u_min.amin(dim=1) + o).min().float().exp()
            w_max = (u.amax(dim=1) + o).max().float().exp()
            # median over an evenly strided sample of at most _MEDIAN_SAMPLE weights (exact below)
            n = u.shape[1]
            step = -(-u.numel() // _MEDIAN_SAMPLE)
            idx = torch.arange(0, u.numel(), step, device=u.device)
            sample = u.reshape(-1)[idx] + o[idx // n]
            if self._last_masked:
                sample = sample[torch.isfinite(sample)]
            out.update(dsl_w_min=w_min, dsl_w_median=sample.median().float().exp(), dsl_w_max=w_max)
        return out

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, kappa={self.kappa}, alpha={self.alpha}, slate_size={self.slate_size}, "
            f"gamma={self.gamma}, tau_range={self.tau_range}, max_weight={self.max_weight}, "
            f"reweight={self.reweight}, temperature={self.temperature}, intensity={self.intensity}, "
            f"fn_threshold={self.fn_threshold}, slate_source={self.slate_source!r}"
        )
