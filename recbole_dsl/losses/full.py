"""Exact full softmax over the whole catalogue, computed over item blocks.

The ``all`` negative sampler makes every real item that is not a training positive of a row's
user a negative of that row. The [B, n_items] score block is too large to keep (330 MB per
tensor for B = 2048 and 41k items), so every reduction here runs over blocks of items with
O(B x block) memory: a running (online) logsumexp with a custom autograd Function whose backward
recomputes each block instead of autograd keeping them all, and a running top-k.

Pure tensor functions, no RecBole imports. Conventions shared by every function:

* ``u`` [B, d] row queries, ``items`` [n_items, d] the item table; scores ``s = u @ items.T``
  (normalise both beforehand for cosine scores).
* The valid items of row b are ``first_item <= j < n_items`` (RecBole's padding item 0 is left
  out with the default ``first_item=1``) that are not in ``excluded`` for b.
* Rows with no valid item reduce to 0 (logsumexp) without gradient; the losses zero them.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass
class Excluded:
    """The (row, item) pairs left out of each row: either as pairs sorted by item (then row), without
    duplicates, or as a dense [B, n_items] bool mask (``dense``), which is cheaper where a batch's
    users hold a large share of a small catalogue (ml-100k: 340k pairs per batch of 2048 rows)."""

    rows: Tensor  # [M] long
    items: Tensor  # [M] long, ascending
    dense: Optional[Tensor] = None  # [B, n_items] bool, True = excluded; rows / items are then empty

    @classmethod
    def of(cls, rows: Tensor, items: Tensor) -> "Excluded":
        """From any (row, item) pairs: sorted by item and de-duplicated."""
        rows, items = rows.reshape(-1).long(), items.reshape(-1).long()
        if rows.shape != items.shape:
            raise ValueError(f"rows and items must have one entry per pair, got {tuple(rows.shape)} and "
                             f"{tuple(items.shape)}")
        if items.numel() == 0:
            return cls(rows, items)
        # One sorted unique of item * n + row orders by item, then row (torch.unique over the
        # columns of a [2, M] tensor does the same but is about 100x slower on CPU).
        n = int(rows.max()) + 1
        keys = torch.unique(items * n + rows)
        return cls(keys % n, keys // n)

    @classmethod
    def of_mask(cls, dense: Tensor) -> "Excluded":
        """From a [B, n_items] bool mask (True = excluded)."""
        empty = torch.zeros(0, dtype=torch.long, device=dense.device)
        return cls(empty, empty, dense)

    @classmethod
    def none(cls, device=None) -> "Excluded":
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return cls(empty, empty)

    def mask(self, n_rows: int, item_ids: Tensor) -> Tensor:
        """[n_rows, len(item_ids)] bool: True where (row, item_ids[j]) is excluded."""
        item_ids = item_ids.long()
        if self.dense is not None:
            return self.dense[:, item_ids]
        if self.items.numel() == 0:
            return torch.zeros(n_rows, item_ids.numel(), dtype=torch.bool, device=item_ids.device)
        # sorted by item, then row: item * n_rows + row is ascending
        keys = self.items * n_rows + self.rows
        query = item_ids.unsqueeze(0) * n_rows + torch.arange(n_rows, device=item_ids.device).unsqueeze(1)
        at = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
        return keys[at] == query

    def counts(self, n_rows: int, n_items: int, first_item: int = 1) -> Tensor:
        """[n_rows] long: the number of valid items of each row."""
        if self.dense is not None:
            return (n_items - first_item) - self.dense[:, first_item:n_items].sum(dim=1)
        inside = (self.items >= first_item) & (self.items < n_items)
        dropped = torch.zeros(n_rows, dtype=torch.long, device=self.rows.device)
        dropped.scatter_add_(0, self.rows, inside.long())
        return (n_items - first_item) - dropped


@dataclass
class AllItems:
    """What a loss's ``compute_all`` gets besides the queries, the item table and the positives."""

    excluded: Excluded
    counts: Tensor  # [B] long, valid items per row (Excluded.counts)
    block: int = 4096
    first_item: int = 1
    # [B] long: BSL's positive groups (rows with equal values share the positive LME), as LossContext.user
    group: Optional[Tensor] = None
    # [B] long: each row's positive item, indexing sim_table (DSL's cos(p, j))
    pos_item: Optional[Tensor] = None
    # [n_items, d], no gradient: the L2-normalised item table of DSL's item similarity
    sim_table: Optional[Tensor] = None
    # [B, d], no gradient: overrides sim_table[pos_item] as the similarity query
    pos_sim_query: Optional[Tensor] = None

    @classmethod
    def build(cls, excluded: Excluded, n_rows: int, n_items: int, block: int = 4096, first_item: int = 1,
              **kw) -> "AllItems":
        return cls(excluded, excluded.counts(n_rows, n_items, first_item), block, first_item, **kw)

    @property
    def scan_kw(self) -> dict:
        """The keyword arguments every block function here takes (excluded, block, first_item)."""
        return dict(excluded=self.excluded, block=self.block, first_item=self.first_item)

    @property
    def rows(self) -> Tensor:
        """[B] bool: rows with at least one valid item."""
        return self.counts > 0

    def sim_aux(self) -> Optional[Tuple[Tensor, Tensor]]:
        """(query [B, d], table [n_items, d]) whose product is cos(p, j), or None when not given."""
        if self.sim_table is None:
            return None
        query = self.pos_sim_query
        if query is None:
            if self.pos_item is None:
                raise ValueError("AllItems: pos_item (or pos_sim_query) is needed with sim_table")
            query = self.sim_table[self.pos_item]
        return query.detach(), self.sim_table.detach()


# phi(block scores [B, blk], *row_args as [B, 1], [aux block [B, blk]]) -> [B, blk], elementwise
Phi = Callable[..., Tensor]


class Block(NamedTuple):
    """Items lo..hi-1 and the excluded pairs inside them, as (row, column in the block), or as the
    [B, hi - lo] slice of a dense exclusion mask."""

    lo: int
    hi: int
    rows: Tensor
    cols: Tensor
    dense: Optional[Tensor] = None

    def fill_(self, x: Tensor, value: float) -> Tensor:
        """Set the excluded entries of a [B, hi - lo] block to ``value``, in place."""
        if self.dense is not None:
            x.masked_fill_(self.dense, value)
        elif self.rows.numel():
            x.index_put_((self.rows, self.cols), x.new_full((), value))  # filled on the device, no copy
        return x


def item_blocks(n_items: int, excluded: Optional[Excluded], block: int, first_item: int = 1,
                device=None) -> List[Block]:
    """The item blocks [first_item, n_items) of at most ``block`` items with their excluded pairs.
    One host synchronisation (the searchsorted boundaries) for all blocks."""
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    if not 0 <= first_item <= n_items:
        raise ValueError(f"first_item must be in [0, n_items={n_items}], got {first_item}")
    edges = list(range(first_item, n_items, int(block))) + [n_items]
    if excluded is not None and excluded.dense is not None:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return [Block(lo, hi, empty, empty, excluded.dense[:, lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])]
    if excluded is None or excluded.items.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return [Block(lo, hi, empty, empty) for lo, hi in zip(edges[:-1], edges[1:])]
    at = torch.searchsorted(excluded.items, torch.tensor(edges, dtype=torch.long, device=excluded.items.device))
    at = at.tolist()
    return [Block(lo, hi, excluded.rows[a:b], excluded.items[a:b] - lo)
            for lo, hi, a, b in zip(edges[:-1], edges[1:], at[:-1], at[1:])]


def _block_scores(u: Tensor, items: Tensor, blk: Block) -> Tensor:
    # detached: the block's gradient is formed by hand (forward keeps no graph)
    return u.detach() @ items.detach()[blk.lo:blk.hi].T


def _block_aux(aux: Optional[Tuple[Tensor, Tensor]], blk: Block) -> Tuple[Tensor, ...]:
    if aux is None:
        return ()
    query, table = aux
    return (query.detach() @ table.detach()[blk.lo:blk.hi].T,)


def _check_inputs(u: Tensor, items: Tensor, row_args: Sequence[Tensor], aux) -> None:
    if u.dim() != 2 or items.dim() != 2 or u.shape[1] != items.shape[1]:
        raise ValueError(f"expected u [B, d] and items [n_items, d], got {tuple(u.shape)} and {tuple(items.shape)}")
    for a in row_args:
        if a.shape != (u.shape[0],):
            raise ValueError(f"row_args must be [B={u.shape[0]}] tensors, got {tuple(a.shape)}")
    if aux is not None:
        query, table = aux
        if query.shape[0] != u.shape[0] or table.shape[0] != items.shape[0] or query.shape[1] != table.shape[1]:
            raise ValueError(f"aux must be (query [B, d'], table [n_items, d']), got {tuple(query.shape)} and "
                             f"{tuple(table.shape)}")


class _Running:
    """Running max and rescaled sum of exp per row (online logsumexp)."""

    def __init__(self, b: int, dtype, device):
        self.m = torch.full((b,), float("-inf"), dtype=dtype, device=device)
        self.s = torch.zeros(b, dtype=dtype, device=device)

    def add(self, x: Tensor) -> None:
        m = torch.maximum(self.m, x.amax(dim=1))
        # a row still all -inf keeps shift 0 (exp(-inf - 0) = 0, no inf - inf)
        shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        self.s = self.s * torch.exp(self.m - shift) + torch.exp(x - shift.unsqueeze(1)).sum(dim=1)
        self.m = m

    def lse(self) -> Tensor:
        """logsumexp per row; 0 for rows that saw no finite entry."""
        found = self.s > 0
        return torch.where(found, torch.log(torch.where(found, self.s, torch.ones_like(self.s))) + self.m,
                           torch.zeros_like(self.s))


# Up to this many [B, n_items] cells (float32: 64 MB) the forward keeps its blocks' scores and phi
# for the backward instead of recomputing them: on catalogues of a few thousand items (one or two
# blocks) the recomputation was a third of the step. Memory stays bounded by this constant.
KEEP_CELLS = 1 << 24


class _RowLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi, blocks, u, items, aux_q, aux_t, *row_args):
        aux = None if aux_q is None else (aux_q, aux_t)
        need_args = ctx.needs_input_grad[6:]
        keep = u.shape[0] * items.shape[0] <= KEEP_CELLS and any(ctx.needs_input_grad[2:])
        args = [a.detach().unsqueeze(1).requires_grad_(keep and n) for a, n in zip(row_args, need_args)]
        run = _Running(u.shape[0], u.dtype, u.device)
        kept = []
        for blk in blocks:
            s = _block_scores(u, items, blk)
            if keep:
                s.requires_grad_(True)
                with torch.enable_grad():
                    x = phi(s, *args, *_block_aux(aux, blk))
                kept.append((s, x))
                x = x.detach().clone()  # the kept graph may have saved x itself: fill a copy
            else:
                x = phi(s, *args, *_block_aux(aux, blk))
            run.add(blk.fill_(x, float("-inf")))  # a fresh block
        lse = run.lse()
        ctx.phi, ctx.blocks, ctx.kept, ctx.kept_args = phi, blocks, kept, args
        ctx.save_for_backward(u, items, aux_q, aux_t, lse, *row_args)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, items, aux_q, aux_t, lse, *row_args = ctx.saved_tensors
        aux = None if aux_q is None else (aux_q, aux_t)
        need_u, need_items = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        need_args = ctx.needs_input_grad[6:]
        grad_u = torch.zeros_like(u) if need_u else None
        grad_items = torch.zeros_like(items) if need_items else None
        grad_args = [torch.zeros_like(a) if n else None for a, n in zip(row_args, need_args)]
        for i_blk, blk in enumerate(ctx.blocks):
            if ctx.kept:
                (s, x), args = ctx.kept[i_blk], ctx.kept_args
            else:
                s = _block_scores(u, items, blk).requires_grad_(True)
                args = [a.detach().unsqueeze(1).requires_grad_(n) for a, n in zip(row_args, need_args)]
                with torch.enable_grad():
                    x = ctx.phi(s, *args, *_block_aux(aux, blk))
            if not x.requires_grad:  # phi depends on nothing that needs a gradient
                continue
            # d lse_b / d phi_bj = softmax_bj; excluded entries and empty rows (lse 0, all
            # entries excluded) get weight 0
            w = blk.fill_(torch.exp(x.detach() - lse.unsqueeze(1)), 0.0).mul_(grad.unsqueeze(1))
            wrt = [s] + [a for a, n in zip(args, need_args) if n]
            # A kept graph must survive the call: autograd may run this backward more than once
            # (gradcheck, retain_graph=True); it is freed with ctx.
            parts = torch.autograd.grad(x, wrt, w, allow_unused=True, retain_graph=bool(ctx.kept))
            g_s = parts[0]
            if g_s is not None:
                if need_u:
                    grad_u += g_s @ items[blk.lo:blk.hi]
                if need_items:
                    grad_items[blk.lo:blk.hi] = g_s.T @ u
            it = iter(parts[1:])
            for i, n in enumerate(need_args):
                if n:
                    g = next(it)
                    if g is not None:
                        grad_args[i] += g.squeeze(1)
        return (None, None, grad_u, grad_items, None, None, *grad_args)



def row_lse_all(u: Tensor, items: Tensor, phi: Phi, row_args: Sequence[Tensor] = (),
                excluded: Optional[Excluded] = None, block: int = 4096, first_item: int = 1,
                aux: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """[B]: ``logsumexp_j phi(s_bj, *row_args_b[, aux_bj])`` over the valid items j of each row.

    ``phi`` is elementwise and differentiable; it gets the block scores [B, blk], each row_arg
    as [B, 1] and, with ``aux = (query [B, d'], table [n_items, d'])``, the block product
    ``query @ table[blk].T`` (no gradient) last. Gradients flow to ``u``, ``items`` and the
    row_args that require them; the backward recomputes every block (memory O(B x block)).
    Rows without a valid item give 0 without gradient. Not twice differentiable.
    """
    _check_inputs(u, items, row_args, aux)
    blocks = item_blocks(items.shape[0], excluded, block, first_item, u.device)
    aux_q, aux_t = (None, None) if aux is None else aux
    return _RowLSE.apply(phi, blocks, u, items, aux_q, aux_t, *row_args)


@torch.no_grad()
def row_stats_all(u: Tensor, items: Tensor, phi: Phi, row_args: Sequence[Tensor] = (),
                  excluded: Optional[Excluded] = None, block: int = 4096, first_item: int = 1,
                  aux: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """(logsumexp, max, min) [B] of phi over the valid items, one pass, no gradient. Rows
    without a valid item give (0, -inf, inf)."""
    _check_inputs(u, items, row_args, aux)
    args = [a.detach().unsqueeze(1) for a in row_args]
    run = _Running(u.shape[0], u.dtype, u.device)
    lo = torch.full((u.shape[0],), float("inf"), dtype=u.dtype, device=u.device)
    for blk in item_blocks(items.shape[0], excluded, block, first_item, u.device):
        x = phi(_block_scores(u, items, blk), *args, *_block_aux(aux, blk))
        lo = torch.minimum(lo, blk.fill_(x.clone(), float("inf")).amin(dim=1))
        run.add(blk.fill_(x, float("-inf")))
    return run.lse(), run.m, lo


@torch.no_grad()
def row_topk_all(u: Tensor, items: Tensor, k: int, excluded: Optional[Excluded] = None, block: int = 4096,
                 first_item: int = 1) -> Tensor:
    """[B, min(k, n_items - first_item)] the k highest scores over each row's valid items,
    descending, no gradient; a row with fewer than k valid items is padded with -inf."""
    _check_inputs(u, items, (), None)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    # Unsorted merges and one sort of the k survivors at the end: a sorted top-k of every block
    # was 20-35% of the scan at Gowalla size (k = 1000, BENCHMARKS.md, "The catalogue scan").
    top = None
    for blk in item_blocks(items.shape[0], excluded, block, first_item, u.device):
        scores = blk.fill_(_block_scores(u, items, blk), float("-inf"))
        cand = scores if top is None else torch.cat([top, scores], dim=1)
        top = torch.topk(cand, min(int(k), cand.shape[1]), dim=1, sorted=False).values
    if top is None:
        return u.new_empty((u.shape[0], 0))
    return torch.sort(top, dim=1, descending=True).values


@torch.no_grad()
def row_sum_all(u: Tensor, items: Tensor, f: Phi, row_args: Sequence[Tensor] = (),
                excluded: Optional[Excluded] = None, block: int = 4096, first_item: int = 1,
                aux: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """[B]: sum of f(s_bj, *row_args_b[, aux_bj]) over the valid items, no gradient."""
    _check_inputs(u, items, row_args, aux)
    args = [a.detach().unsqueeze(1) for a in row_args]
    total = u.new_zeros(u.shape[0])
    for blk in item_blocks(items.shape[0], excluded, block, first_item, u.device):
        x = f(_block_scores(u, items, blk), *args, *_block_aux(aux, blk))
        total += blk.fill_(x.to(u.dtype), 0.0).sum(dim=1)
    return total


@torch.no_grad()
def cap_log_scale_all(u: Tensor, items: Tensor, log_w0: Phi, counts: Tensor, cap: float,
                      excluded: Optional[Excluded] = None, block: int = 4096, first_item: int = 1,
                      aux: Optional[Tuple[Tensor, Tensor]] = None, max_passes: int = 64) -> Tensor:
    """[B] log c of the exact water-filling cap over the valid items: ``w_j = min(c * w0_j, cap)``
    with mean 1 over the row's ``counts`` valid items, where ``log w0_j = log_w0(s, [aux])`` (mean
    one already). Needs cap >= 1.

    Fixed-point iteration c <- (n - k(c) * cap) / sum_{unclipped} w0 from c = 1, one pass over
    the blocks each: the clipped set only grows and c increases to the exact solution, reached
    when the number of clipped items stops changing (usually after a few passes; after
    ``max_passes`` the last c, a slight under-estimate, is used). Rows with no valid item get 0.
    One host synchronisation per pass (the convergence test).
    """
    log_cap = math.log(cap)
    n = counts.to(u.dtype)
    log_c = u.new_zeros(u.shape[0])
    blocks = item_blocks(items.shape[0], excluded, block, first_item, u.device)
    prev = None
    for _ in range(max_passes):
        clipped = torch.zeros_like(counts)
        run = _Running(u.shape[0], u.dtype, u.device)
        for blk in blocks:
            v = blk.fill_(log_w0(_block_scores(u, items, blk), *_block_aux(aux, blk)), float("-inf"))
            over = v + log_c.unsqueeze(1) > log_cap
            clipped += over.sum(dim=1)
            run.add(v.masked_fill_(over, float("-inf")))
        if prev is not None and torch.equal(clipped, prev):
            break
        nothing_clipped = prev is None and not bool(clipped.any())
        budget = (n - clipped.to(n.dtype) * cap).clamp_min(torch.finfo(n.dtype).tiny)
        # a row with every item clipped (cap 1, up to rounding) keeps its c: all its weights are the cap
        log_c = torch.where((counts > 0) & (run.s > 0), torch.log(budget) - run.lse(), log_c)
        if nothing_clipped:  # c = n / sum(w0) is already the answer: no pass to confirm it
            break
        prev = clipped
    return log_c
