"""The optimizer of `sparse_update: True`: Adam that updates only the rows a batch touched.

RecBole builds ``torch.optim.Adam`` over dense embedding tables: every step reads and writes
both whole tables and their two moment buffers, whatever the batch touched. At Gowalla size that
update is about half of a BPR step, and because the tables grow with the data, an epoch costs
(interactions x (users + items)) (BENCHMARKS.md, Scale). With `sparse_update` the adapter's
lookups give row-sparse gradients (``torch.sparse_coo_tensor``), and `LazyAdam` updates the
touched rows only: the cost of a step follows the batch, not the catalogue.

Semantics (as ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam): a row's moments and value
change only in steps whose gradient touches it; dense Adam would keep moving an untouched row by
its decaying momentum. The bias corrections use the parameter's step count. Dense gradients (a
table used whole, e.g. by the exact softmax or a model's other weights) get exactly
``torch.optim.Adam``'s update, so a run whose gradients are all dense equals Adam's run.
Weight decay is added to the gradient of the touched rows only (L2, as Adam's ``weight_decay``).
"""
from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam over dense gradients; lazy, row-wise Adam over sparse (COO) ones."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if not lr >= 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                step_size = lr / (1 - b1 ** t)
                root_bc2 = math.sqrt(1 - b2 ** t)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    _sparse_rows(p, p.grad, m, v, b1, b2, eps, wd, step_size, root_bc2)
                else:
                    g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)
        return loss


# Above this share of touched rows the lazy update runs as dense passes with a row mask: gathering
# and scattering most of a table costs more than passing over all of it (41k x 64 on a 2-core
# EPYC: dense Adam 5-9 ms; the row-wise update of every row 25 ms, of 40% of them 8.5 ms, of 3k
# rows 2 ms; the masked passes 9.6 ms).
DENSE_ROWS_SHARE = 0.5


def _masked_dense_rows(p, rows, g_rows, m, v, b1, b2, eps, wd, step_size, root_bc2) -> None:
    """The lazy update of ``rows`` by whole-table passes: the touched rows' weights are 1 - beta,
    the others' 0, so an untouched row's moments and value stay exactly as they were."""
    g = torch.zeros_like(p).index_copy_(0, rows, g_rows)
    touched = torch.zeros((p.shape[0],) + (1,) * (p.dim() - 1), dtype=p.dtype, device=p.device)
    touched.index_fill_(0, rows, 1.0)
    if wd != 0:
        g.addcmul_(p, touched, value=wd)
    m.lerp_(g, touched * (1 - b1))
    v.mul_(touched.mul(b2 - 1).add_(1)).addcmul_(g, g, value=1 - b2)
    p.addcdiv_(m * touched, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)


def _sparse_rows(p, grad, m, v, b1, b2, eps, wd, step_size, root_bc2) -> None:
    grad = grad.coalesce()  # one entry per touched row, duplicates summed
    if grad.sparse_dim() == 1:  # what an embedding lookup gives: whole rows
        rows, g = grad.indices()[0], grad.values()
    else:  # element-sparse: a row counts as touched where any of its elements is
        rows = torch.unique(grad.indices()[0])
        g = grad.to_dense().index_select(0, rows)
    if rows.numel() == 0:
        return
    if rows.numel() > DENSE_ROWS_SHARE * p.shape[0]:
        _masked_dense_rows(p, rows, g, m, v, b1, b2, eps, wd, step_size, root_bc2)
        return
    if wd != 0:
        g = g.add(p.index_select(0, rows), alpha=wd)
    m_r = m.index_select(0, rows).lerp_(g, 1 - b1)
    v_r = v.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
    m.index_copy_(0, rows, m_r)
    v.index_copy_(0, rows, v_r)
    p.index_add_(0, rows, m_r.div_(v_r.sqrt_().div_(root_bc2).add_(eps)), alpha=-step_size)
