"""Pure functions that turn user and item representations into the [B] / [B, N] scores a loss needs.

Two ways to get the scores of B rows against their N negatives:
- "full": one matrix product of the batch against the whole catalogue, then pick columns.
  Costs B * n_items * d in one dense GEMM, which CPUs and GPUs run near peak.
- "gather": only the B * N (row, negative) products, by a sampled dense-dense product and
  weighted bag sums (no [B, N, d] block is built). Costs B * N * d, memory-bound; it wins once
  the catalogue is about ten times N or larger.
`choose_score_path` decides from the sizes so users never have to.

A third case needs no choice: negatives shared by every row (the `shared` and `in_batch`
samplers pass them as an expanded [B, N] view of one [N] set, row stride 0) are scored with one
[B, d] x [d, N] product, whatever the path; it costs B * N * d as a dense GEMM, cheaper than both.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

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

# "full" is chosen while n_items <= FULL_PATH_RATIO * N. With the sampled-product gather path,
# SL forward + backward at B = 2048, d = 64 broke even between n_items / N of 10 (full faster at
# 10k items, N = 1000) and 15 (gather faster at 3.7k items, N = 256); measured on a loaded 2-core
# EPYC (BENCHMARKS.md, Scale). The old gather of [B, N, d] blocks broke even at about 64.
FULL_PATH_RATIO = 10.0


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


# Largest [rows, n_items] block the full path computes at once (floats): 2^24 is 64 MB in float32.
# A larger batch is scored in row blocks, so memory stays bounded whatever the catalogue.
FULL_BLOCK_CELLS = 1 << 24


def _row_blocks(n_rows: int, n_items: int):
    step = max(1, FULL_BLOCK_CELLS // max(1, n_items))
    return [(s, min(n_rows, s + step)) for s in range(0, n_rows, step)]


class _GatherAllScores(torch.autograd.Function):
    """``(u @ items.T).gather(1, idx)`` with the [B, n_items] product and its gradient in reused
    buffers, in blocks of rows of at most FULL_BLOCK_CELLS cells.

    Autograd would allocate a fresh [B, n_items] block for the product forward and another for
    the scattered gradient backward, every batch. On CPU a fresh block of that size comes from
    the OS page by page (about 1 ms per 4 MB here), which made the forward product cost twice the
    backward ones of the same size (BENCHMARKS.md, Speed). The product is dead once its columns
    are gathered, so both can live in one workspace buffer.
    """

    @staticmethod
    def forward(ctx, u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(u, items, idx)
        return _gather_all(u, items, idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, items, idx = ctx.saved_tensors
        ws = workspace(grad.device, grad.dtype)
        grad_u = torch.empty_like(u) if ctx.needs_input_grad[0] else None
        grad_items = torch.zeros_like(items) if ctx.needs_input_grad[1] else None
        for s, e in _row_blocks(u.shape[0], items.shape[0]):
            g = ws.get("full", (e - s, items.shape[0]))
            g.zero_().scatter_add_(1, idx[s:e], grad[s:e])
            if grad_u is not None:
                torch.mm(g, items, out=grad_u[s:e])
            if grad_items is not None:
                grad_items.addmm_(g.t(), u[s:e])
        return grad_u, grad_items, None


def _gather_all(u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
    ws = workspace(u.device, u.dtype)
    blocks = _row_blocks(u.shape[0], items.shape[0])
    if len(blocks) == 1:
        return torch.mm(u, items.t(), out=ws.get("full", (u.shape[0], items.shape[0]))).gather(1, idx)
    out = u.new_empty(idx.shape)
    for s, e in blocks:
        full = torch.mm(u[s:e], items.t(), out=ws.get("full", (e - s, items.shape[0])))
        torch.gather(full, 1, idx[s:e], out=out[s:e])
    return out


def gather_all_scores(u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
    """[B, N] scores ``u[b] . items[idx[b, j]]`` through products with the whole table."""
    if torch.is_grad_enabled() and (u.requires_grad or items.requires_grad):
        return _GatherAllScores.apply(u, items, idx)
    return _gather_all(u, items, idx)


class _SampledScores(torch.autograd.Function):
    """``(u[b] . items[idx[b, j]])`` [B, N] without the [B, N, d] block of gathered rows.

    Gathering the negatives' rows (``items[idx]``) and reducing them with a batched product moves
    B * N * d floats through memory three times per batch (gather, its gradient, the scatter into
    the table): 2048 x 256 x 64 floats are 134 MB, about 0.36 s per step at Gowalla size on two
    cores. The same products as sparse-pattern kernels read each item row once per use and write
    only [B, N] (forward: a sampled dense-dense product; backward: two weighted bag sums, one over
    each row's negatives, one over each item's occurrences), about 25 ms (BENCHMARKS.md, Scale).
    """

    @staticmethod
    def forward(ctx, u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
        b, n = idx.shape
        flat = idx.reshape(-1)
        crow = torch.arange(0, b * n + 1, n, device=idx.device)
        with warnings.catch_warnings():
            # torch warns (once per process) that sparse CSR tensors are in beta; only their sampled
            # product is used here, and tests/test_scoring.py checks it against the dense one.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            pattern = torch.sparse_csr_tensor(crow, flat, torch.zeros(flat.shape, dtype=u.dtype, device=u.device),
                                              (b, items.shape[0]), check_invariants=False)
        out = torch.sparse.sampled_addmm(pattern, u, items.t(), beta=0.0).values().view(b, n)
        ctx.save_for_backward(u, items, idx)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, items, idx = ctx.saved_tensors
        grad = grad.contiguous()
        grad_u = grad_items = None
        if ctx.needs_input_grad[0]:  # grad_u[b] = sum_j grad[b, j] * items[idx[b, j]]
            grad_u = F.embedding_bag(idx, items, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:  # grad_items[i] = sum over (b, j) with idx[b, j] == i of grad[b, j] * u[b]
            flat = idx.reshape(-1)
            # int32 keys sort in about half the time of int64 ones (radix passes).
            order = torch.argsort(flat.int() if items.shape[0] < 2**31 else flat)
            starts = torch.zeros(items.shape[0], dtype=torch.long, device=idx.device)
            torch.cumsum(torch.bincount(flat, minlength=items.shape[0])[:-1], 0, out=starts[1:])
            grad_items = F.embedding_bag(order // idx.shape[1], u, starts, per_sample_weights=grad.view(-1)[order],
                                         mode="sum")
        return grad_u, grad_items, None


def sampled_scores(u: Tensor, items: Tensor, idx: Tensor) -> Tensor:
    """[B, N] scores ``u[b] . items[idx[b, j]]`` by sparse-pattern products (no [B, N, d] block)."""
    if idx.numel() == 0:
        return u.new_zeros(idx.shape)
    if idx.shape[1] > items.shape[0]:
        # torch's sampled product refuses rows with more entries than columns; the product with
        # the whole (small) table is the cheaper path there anyway.
        return gather_all_scores(u, items, idx)
    return _SampledScores.apply(u.contiguous(), items.contiguous(), idx.contiguous())


class _Normalize(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` with a backward of three passes over x instead of autograd's
    eight: the cosine score path normalises the whole item table every batch, and at Gowalla size
    (41k x 64) the eight elementwise passes of the composed backward cost about as much as the
    sampled products themselves."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-12)
        y = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, norm = ctx.saved_tensors
        # d(x / |x|) = (g - y (g . y)) / |x|. Rows whose norm was clamped (|x| < 1e-12) get about
        # g / 1e-12, as through autograd's F.normalize.
        dot = (grad * y).sum(-1, keepdim=True)
        return torch.addcmul(grad, y, dot, value=-1).div_(norm)


def normalize(x: Tensor) -> Tensor:
    """L2-normalised rows of x (``F.normalize(x, dim=-1)``) with a cheaper backward."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Normalize.apply(x)
    return F.normalize(x, dim=-1)


def prepare(x: Tensor, score_fn: str) -> Tensor:
    """Representations as the score function takes them: L2-normalised rows for cosine."""
    return normalize(x) if score_fn == "cosine" else x




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
    sparse: bool = False,
) -> Scores:
    """Scores of each row's positive [B] and negatives [B, N] and, with ``affinity_alpha``, the
    affinity ``alpha * s_n + (1 - alpha) * cos(p, n)`` [B, N] without gradient, where
    ``cos(p, n)`` is the cosine similarity of the row's positive item to each negative (see
    `mix_affinity`; alpha 0 gives the similarity itself).

    ``neg_item`` [B, N] per row, or one [N] set expanded over the rows (``is_shared``), which is
    scored with one [B, d] x [d, N] product (``path`` does not matter then).

    ``sparse``: ``item_table`` is reached only through row lookups with sparse gradients (the
    rows this batch scores), except on the "full" path, which uses the whole table."""
    u = prepare(user_e, score_fn)
    with_item_sim = affinity_alpha is not None
    item_sim, mixed = None, False
    if is_shared(neg_item):
        # Only the B positives and the N shared items are scored: normalising those rows rather
        # than the whole table (41k x 64, forward and backward, every batch at Gowalla size) is
        # what keeps a shared or in-batch step near the cost of a BPR step.
        b, shared = pos_item.shape[0], neg_item[0]
        rows = prepare(F.embedding(torch.cat([pos_item, shared]), item_table, sparse=sparse), score_fn)
        pos = (u * rows[:b]).sum(-1)
        neg = u @ rows[b:].t()
        if with_item_sim:
            with torch.no_grad():
                rc = rows.detach() if score_fn == "cosine" else F.normalize(rows.detach(), dim=-1)
                q = rc[:b]
                if score_fn == "cosine":  # one product with the mixed query, as below
                    q, mixed = torch.lerp(q, u.detach(), float(affinity_alpha)), True
                item_sim = q @ rc[b:].t()
        if not mixed:
            item_sim = mix_affinity(item_sim, neg, affinity_alpha)
        return Scores(pos, neg, item_sim)
    if sparse and path == "gather":
        # Only the distinct items of the batch, as one sparse lookup; indices into them from here on.
        b = pos_item.shape[0]
        uniq, inv = distinct(torch.cat([pos_item, neg_item.reshape(-1)]), item_table.shape[0])
        item_table = F.embedding(uniq, item_table, sparse=True)
        pos_item, neg_item = inv[:b], inv[b:].view(neg_item.shape)
    # Normalising the table once (n_items x d) is cheaper than normalising B x N gathered rows.
    items = prepare(item_table, score_fn)
    if with_item_sim:
        with torch.no_grad():
            items_c = items.detach() if score_fn == "cosine" else F.normalize(item_table.detach(), dim=-1)
            q = items_c[pos_item]
            if score_fn == "cosine":
                # s_n = u . n and sim = p . n are products with the same normalised item n, so their
                # mix is one product with the mixed query lerp(p, u, alpha): no second [B, N]
                # block, no mixing pass.
                q, mixed = torch.lerp(q, u.detach(), float(affinity_alpha)), True
    if path == "full":
        # Positives by a row-wise dot product: concatenating them to the negatives' columns
        # would copy the whole [B, N] index every batch for one column.
        pos = (u * items[pos_item]).sum(-1)
        neg = gather_all_scores(u, items, neg_item)
        if with_item_sim:
            with torch.no_grad():
                item_sim = gather_all_scores(q, items_c, neg_item)
    elif path == "gather":
        pos = (u * items[pos_item]).sum(-1)
        neg = sampled_scores(u, items, neg_item)
        if with_item_sim:
            with torch.no_grad():
                item_sim = sampled_scores(q, items_c, neg_item)
    else:
        raise ConfigError("score_path", path, f"one of {list(SCORE_PATHS)}")
    if not mixed:
        item_sim = mix_affinity(item_sim, neg, affinity_alpha)
    return Scores(pos, neg, item_sim)


def distinct(idx: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """(the distinct values of ``idx`` in increasing order, each entry's position among them), for
    values in [0, n): a mark table of n entries instead of ``torch.unique``'s sort. For the 526k
    entries of a 2048 x (1 + 256) batch over Gowalla's 41k items, on one CPU core: 5.6 ms against
    torch.unique's 15.8 ms."""
    slot = torch.zeros(n, dtype=torch.long, device=idx.device)
    slot[idx] = 1
    uniq = slot.nonzero().squeeze(1)
    slot[uniq] = torch.arange(uniq.numel(), device=idx.device)
    return uniq, slot[idx]


def all_item_scores(user_e: Tensor, item_table: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B, n_items] scores for full-sort evaluation, with the same score function as training."""
    return prepare(user_e, score_fn) @ prepare(item_table, score_fn).t()


def pair_scores(user_e: Tensor, item_e: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B] scores of aligned (user, item) pairs, for RecBole's sampled evaluation (predict)."""
    return (prepare(user_e, score_fn) * prepare(item_e, score_fn)).sum(-1)
