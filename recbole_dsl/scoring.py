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

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.samplers.base import is_shared

SCORE_FNS = ("cosine", "dot")
SCORE_PATHS = ("auto", "full", "gather")

# "full" is chosen while n_items <= FULL_PATH_RATIO * N. A dense GEMM element costs about a
# hundredth of a gathered-and-scattered one on CPU (benchmarks/bench_speed.py, score-path rows),
# so the matrix product over the whole catalogue wins far past n_items == N. Re-measured with
# backward (BENCHMARKS.md, Robustness (d)): break-even at n_items / N of about 64 (20k items) to
# 80 (100k items) on a 2-core Xeon.
FULL_PATH_RATIO = 64.0


def check_score_fn(value, key: str = "score_fn") -> str:
    if value not in SCORE_FNS:
        raise ConfigError(key, value, f"one of {list(SCORE_FNS)}")
    return value


def choose_score_path(path: str, n_items: int, num_neg: int) -> str:
    if path != "auto":
        return path
    return "full" if n_items <= FULL_PATH_RATIO * num_neg else "gather"


def _prep(x: Tensor, score_fn: str) -> Tensor:
    return F.normalize(x, dim=-1) if score_fn == "cosine" else x


def batch_scores(
    user_e: Tensor,
    item_table: Tensor,
    pos_item: Tensor,
    neg_item: Tensor,
    score_fn: str = "cosine",
    path: str = "full",
    with_item_sim: bool = False,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Scores of each row's positive [B] and negatives [B, N], and (optionally, without gradient)
    the cosine similarity of the row's positive item to each of its negatives [B, N].

    ``neg_item`` [B, N] per row, or one [N] set expanded over the rows (``is_shared``), which is
    scored with one [B, d] x [d, N] product (``path`` does not matter then)."""
    u = _prep(user_e, score_fn)
    # Normalising the table once (n_items x d) is cheaper than normalising B x N gathered rows.
    items = _prep(item_table, score_fn)
    item_sim = None
    if is_shared(neg_item):
        shared = neg_item[0]
        neg_e = items[shared]  # [N, d]
        pos = (u * items[pos_item]).sum(-1)
        neg = u @ neg_e.t()
        if with_item_sim:
            with torch.no_grad():
                items_c = items.detach() if score_fn == "cosine" else F.normalize(item_table.detach(), dim=-1)
                item_sim = items_c[pos_item] @ items_c[shared].t()
    elif path == "full":
        # Positives by a row-wise dot product: concatenating them to the negatives' columns
        # would copy the whole [B, N] index every batch for one column.
        pos = (u * items[pos_item]).sum(-1)
        neg = (u @ items.t()).gather(1, neg_item)
        if with_item_sim:
            with torch.no_grad():
                items_c = items.detach() if score_fn == "cosine" else F.normalize(item_table.detach(), dim=-1)
                item_sim = (items_c[pos_item] @ items_c.t()).gather(1, neg_item)
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
    return pos, neg, item_sim


def all_item_scores(user_e: Tensor, item_table: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B, n_items] scores for full-sort evaluation, with the same score function as training."""
    return _prep(user_e, score_fn) @ _prep(item_table, score_fn).t()


def pair_scores(user_e: Tensor, item_e: Tensor, score_fn: str = "cosine") -> Tensor:
    """[B] scores of aligned (user, item) pairs, for RecBole's sampled evaluation (predict)."""
    return (_prep(user_e, score_fn) * _prep(item_e, score_fn)).sum(-1)
