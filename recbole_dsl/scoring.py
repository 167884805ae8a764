"""Pure functions that turn user and item representations into the [B] / [B, N] scores a loss needs.

Two ways to get the scores of B rows against their N negatives:
- "full": one matrix product of the batch against the whole catalogue, then pick columns.
  Costs B * n_items * d in one dense GEMM, which CPUs and GPUs run near peak.
- "gather": gather the B * N negative representations and take B small dot products.
  Costs B * N * d but through a memory-bound gather; it wins only when N is much smaller
  than the catalogue.
`choose_score_path` decides from the sizes so users never have to.

A third case needs no choice: negatives shared by every row (the `shared` and `in_batch`
samplers pass them as an expanded [B, N] view of one [N] set, row stride 0) are scored with one
[B, d] x [d, N] product, whatever the path; it costs B * N * d as a dense GEMM, cheaper than both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.samplers.base import is_shared
from recbole_dsl.workspace import workspace

SCORE_FNS = ("cosine", "dot")
# Pair scorers (NeuMF, ConvNCF, NAIS, NNCF) output an unbounded logit per (user, item) pair.
PAIR_SCORE_FNS = ("tanh", "logit")
SCORE_PATHS = ("auto", "full", "gather")

# "full" is chosen while n_items <= FULL_PATH_RATIO * N. A dense GEMM element costs about a
# hundredth of a gathered-and-scattered one on CPU (benchmarks/bench_speed.py, score-path rows),
# so the matrix product over the whole catalogue wins far past n_items == N. Re-measured with
# backward (BENCHMARKS.md, "Samplers and score paths"): break-even at n_items / N of about 64 (20k items) to
# 80 (100k items) on a 2-core Xeon.
FULL_PATH_RATIO = 64.0


def pair_logit_scores(logits: Tensor, pair_score_fn: str) -> Tensor:
    """A pair scorer's logits as the loss's scores. ``tanh`` bounds them to (-1, 1), the range of a
    cosine: the softmax-family losses (positive left out of the denominator, BSL's linear positive
    term) never stop pushing the positive's score up, so over unbounded scores they keep growing a
    model's parameters; NAIS's score, exponential in its attention logits, overflowed to NaN within
    150 batches on ml-100k (BENCHMARKS.md, Models). tanh is monotone: rankings are unchanged."""
    return torch.tanh(logits) if pair_score_fn == "tanh" else logits


def choose_score_path(path: str, n_items: int, num_neg: int) -> str:
    if path != "auto":
        return path
    return "full" if n_items <= FULL_PATH_RATIO * num_neg else "gather"


class _GatherAllScores(torch.autograd.Function):
    """``(u @ items.T).gather(1, idx)`` with the [B, n_items] product and its gradient in reused
    buffers.

    Autograd would allocate a fresh [B, n_items] block for the product forward and another for
    the scattered gradient backward, every batch. On CPU a fresh block of that size comes from
    the OS page by page (about 1 ms per 4 MB here), which made the forward product cost twice the
    backward ones of the same size (BENCHMARKS.md, Speed). The product is dead once its columns
    are gathered, so both can live in one workspace buffer.
    """

    @staticmethod
    def forward(ctx, u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
        full = workspace(u.device, u.dtype).get("full", (u.shape[0], items.shape[0]))
        torch.mm(u, items.t(), out=full)
        ctx.save_for_backward(u, items, idx)
        return full.gather(1, idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, items, idx = ctx.saved_tensors
        g = workspace(grad.device, grad.dtype).get("full", (u.shape[0], items.shape[0]))
        g.zero_().scatter_add_(1, idx, grad)
        grad_u = g @ items if ctx.needs_input_grad[0] else None
        grad_items = g.t() @ u if ctx.needs_input_grad[1] else None
        return grad_u, grad_items, None


def gather_all_scores(u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
    """[B, N] scores ``u[b] . items[idx[b, j]]`` through one product with the whole table."""
    if torch.is_grad_enabled() and (u.requires_grad or items.requires_grad):
        return _GatherAllScores.apply(u, items, idx)
    full = workspace(u.device, u.dtype).get("full", (u.shape[0], items.shape[0]))
    return torch.mm(u, items.t(), out=full).gather(1, idx)


def _prep(x: Tensor, score_fn: str) -> Tensor:
    return F.normalize(x, dim=-1) if score_fn == "cosine" else x


def mix_affinity(item_sim: Optional[Tensor], neg: Tensor, alpha: Optional[float]) -> Optional[Tensor]:
    """DSL's reweighting input ``alpha * s_n + (1 - alpha) * item_sim`` (no gradient); ``item_sim``
    itself when ``alpha`` is None."""
    if item_sim is None or alpha is None:
        return item_sim
    with torch.no_grad():
        return torch.lerp(item_sim.to(neg.dtype), neg.detach(), float(alpha))


@dataclass
class Scores:
    """What the score path gives a loss for a batch of R rows."""

    pos: Tensor  # [R] score of each row's positive
    neg: Tensor  # [R, N] scores of its negatives
    # [R, N], no gradient: alpha * s_n + (1 - alpha) * cos(p, n) when the loss asked for it
    # (ScoreNeeds.affinity_alpha), else None.
    affinity: Optional[Tensor] = None


def batch_scores(
    user_e: Tensor,
    item_table: Tensor,
    pos_item: Tensor,
    neg_item: Tensor,
    score_fn: str = "cosine",
    path: str = "full",
    affinity_alpha: Optional[float] = None,
) -> Scores:
    """Scores of each row's positive [B] and negatives [B, N] and, with ``affinity_alpha``, the
    affinity ``alpha * s_n + (1 - alpha) * cos(p, n)`` [B, N] without gradient, where
    ``cos(p, n)`` is the cosine similarity of the row's positive item to each negative (see
    `mix_affinity`; alpha 0 gives the similarity itself).

    ``neg_item`` [B, N] per row, or one [N] set expanded over the rows (``is_shared``), which is
    scored with one [B, d] x [d, N] product (``path`` does not matter then)."""
    u = _prep(user_e, score_fn)
    # Normalising the table once (n_items x d) is cheaper than normalising B x N gathered rows.
    items = _prep(item_table, score_fn)
    with_item_sim = affinity_alpha is not None
    item_sim, mixed = None, False
    if with_item_sim and (is_shared(neg_item) or path == "full"):
        with torch.no_grad():
            items_c = items.detach() if score_fn == "cosine" else F.normalize(item_table.detach(), dim=-1)
            q = items_c[pos_item]
            if score_fn == "cosine":
                # s_n = u . n and sim = p . n are products with the same normalised item n, so their
                # mix is one product with the mixed query lerp(p, u, alpha): no second [B, N]
                # block, no mixing pass.
                q, mixed = torch.lerp(q, u.detach(), float(affinity_alpha)), True
    if is_shared(neg_item):
        shared = neg_item[0]
        neg_e = items[shared]  # [N, d]
        pos = (u * items[pos_item]).sum(-1)
        neg = u @ neg_e.t()
        if with_item_sim:
            with torch.no_grad():
                item_sim = q @ items_c[shared].t()
    elif path == "full":
        # Positives by a row-wise dot product: concatenating them to the negatives' columns
        # would copy the whole [B, N] index every batch for one column.
        pos = (u * items[pos_item]).sum(-1)
        neg = gather_all_scores(u, items, neg_item)
        if with_item_sim:
            with torch.no_grad():
                item_sim = gather_all_scores(q, items_c, neg_item)
    elif path == "gather":
        pos_e = items[pos_item]  # [B, d]
        neg_e = items[neg_item]  # [B, N, d]: B * N * d floats, hence "full" for large N
        pos = (u * pos_e).sum(-1)
        neg = torch.bmm(neg_e, u.unsqueeze(2)).squeeze(2)
        if with_item_sim:
            with torch.no_grad():
                pc = F.normalize(pos_e.detach(), dim=-1)
                nc = F.normalize(neg_e.detach(), dim=-1)
                item_sim = torch.bmm(nc, pc.unsqueeze(2)).squeeze(2)
    else:
        raise ConfigError("score_path", path, f"one of {list(SCORE_PATHS)}")
    if not mixed:
        item_sim = mix_affinity(item_sim, neg, affinity_alpha)
    return Scores(pos, neg, item_sim)


def all_item_scores(user_e: Tensor, item_table: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B, n_items] scores for full-sort evaluation, with the same score function as training."""
    return _prep(user_e, score_fn) @ _prep(item_table, score_fn).t()


def pair_scores(user_e: Tensor, item_e: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B] scores of aligned (user, item) pairs, for RecBole's sampled evaluation (predict)."""
    return (_prep(user_e, score_fn) * _prep(item_e, score_fn)).sum(-1)
