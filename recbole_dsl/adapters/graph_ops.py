"""Propagation over a fixed sparse graph, for LightGCN-style models.

RecBole's LightGCN, NCL and SGL keep their normalised adjacency as a COO tensor and propagate with
`torch.sparse.mm`, whose CPU kernels (forward, and the backward through the COO tensor) dominate
a Gowalla-size training step. `SparseOperator` keeps the same matrix in CSR once, with its
transpose (the matrix itself when it is symmetric, as D^-1/2 A D^-1/2 of an undirected graph is),
and differentiates the product with respect to the dense side only: d(A x)/dx applied to g is
A^T g, one more CSR product. The matrix is a constant of the model (no gradient flows into it).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _coalesced(a: Tensor) -> Tensor:
    if a.layout == torch.sparse_coo:
        return a.coalesce()
    return a.to_sparse_coo().coalesce()


def _csr(a: Tensor) -> Tensor:
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return a.to_sparse_csr()


def _transpose(a: Tensor) -> Tensor:
    return torch.sparse_coo_tensor(a.indices().flip(0), a.values(), (a.shape[1], a.shape[0]),
                                   check_invariants=False).coalesce()


def _is_symmetric(a: Tensor) -> bool:
    """Exact test on a coalesced COO matrix: the same pattern and values as its transpose."""
    if a.shape[0] != a.shape[1]:
        return False
    t = _transpose(a)
    return bool(torch.equal(a.indices(), t.indices()) and torch.equal(a.values(), t.values()))


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, a_t: Tensor) -> Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.a_t @ grad, None, None


class SparseOperator:
    """``op(x) = A @ x`` for a constant sparse A ([n, m]) and a dense x ([m, d]), differentiable in x."""

    def __init__(self, matrix: Tensor):
        coo = _coalesced(matrix.detach())
        self.a = _csr(coo)
        self.symmetric = _is_symmetric(coo)
        self.a_t = self.a if self.symmetric else _csr(_transpose(coo))

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype != self.a.dtype:
            raise TypeError(f"SparseOperator: the dense side is {x.dtype}, the matrix {self.a.dtype}")
        return _SpMM.apply(x, self.a, self.a_t)


def light_propagate(ops: Sequence[SparseOperator], ego: Tensor,
                    n_mean: Optional[int] = None) -> Tuple[Tensor, List[Tensor]]:
    """LightGCN's propagation: layer k is ops[k-1] applied to layer k-1 (layer 0: the ego
    embeddings); returns the mean of the first ``n_mean + 1`` layers (all of them by default) and
    the list of every layer (NCL's structure neighbours can reach further than the mean does)."""
    layers = [ego]
    for op in ops:
        layers.append(op(layers[-1]))
    n = len(layers) if n_mean is None else n_mean + 1
    return torch.stack(layers[:n], dim=1).mean(dim=1), layers


class OperatorCache:
    """The SparseOperator of each sparse matrix a model propagates with, built on first use.

    Keyed by the matrix object: SGL replaces its perturbed graphs every epoch, and an entry lives
    only as long as its matrix does (a weak reference), so old graphs are not kept alive."""

    def __init__(self):
        self._ops: Dict[int, Tuple[weakref.ref, SparseOperator]] = {}

    def __call__(self, matrix: Tensor) -> SparseOperator:
        entry = self._ops.get(id(matrix))
        if entry is not None and entry[0]() is matrix:
            return entry[1]
        self._ops = {k: v for k, v in self._ops.items() if v[0]() is not None}
        op = SparseOperator(matrix)
        self._ops[id(matrix)] = (weakref.ref(matrix), op)
        return op

    def __len__(self) -> int:
        return sum(v[0]() is not None for v in self._ops.values())
