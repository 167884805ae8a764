"""The exact full softmax (neg_sampler: all): every loss's `compute_all`, computed over item blocks,
against its own `compute` on the dense block of all real items with the excluded pairs masked;
the block functions of recbole_dsl.losses.full on their own (gradcheck, extreme temperatures, a
memory bound). Parametrised over the `rec_loss` registry, so a new loss is covered automatically.
"""
from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import recbole_dsl.losses.full as full
from recbole_dsl.losses import LOSSES, LossContext
from recbole_dsl.losses.full import (
    AllItems, Excluded, cap_log_scale_all, row_lse_all, row_stats_all, row_sum_all, row_topk_all,
)
from recbole_dsl.scoring import mix_affinity

B, N_ITEMS, D = 7, 23, 5
BLOCKS = (1, 4, 64)  # one item per block, several uneven blocks, one block for everything
TOL = dict(rtol=1e-10, atol=1e-10)

# Per loss, the arguments to try (every branch on somewhere); a loss not listed: its defaults.
CONFIGS = {
    "SL": [dict(tau=0.2), dict(tau=0.2, include_positive=True), dict(tau=0.3, log_q_correction=True)],
    "PSL": [dict(tau=0.1, activation=a) for a in ("tanh", "atan", "relu")],
    "BSL": [dict(tau_pos=0.1, tau_neg=0.15), dict(tau_pos=0.2, tau_neg=0.1, group_positives=False),
            dict(form="pseudocode", tau_pos=0.1, tau_neg=0.15), dict(form="official", t1=0.12, t2=1.2),
            dict(form="official", t1=0.12, t2=0.9, group_positives=False)],
    "DSL": [
        dict(tau=0.2, kappa=2.0, alpha=0.5, gamma=0.7, slate_size=3, max_weight=1.5),  # everything
        dict(tau=0.2, kappa=2.0, alpha=0.5, gamma=0.7, slate_size=None),  # slate = every valid item
        dict(tau=0.2, kappa=3.0, alpha=0.0, gamma=0.0, max_weight=1.2),  # similarity only, capped
        dict(tau=0.3, kappa=-1.5, alpha=1.0, gamma=-0.5, slate_size=40),  # hardness only, K > catalogue
        dict(tau=0.2, reweight=False, gamma=0.5, slate_size=5),
        dict(tau=0.2, reweight=False, temperature=False),
        dict(tau=0.2, reweight=False, gamma=0.5, slate_size=None, intensity="lse"),
        dict(tau=0.2, reweight=False, gamma=0.5, slate_size=None, intensity="margin"),
        dict(tau=0.2, kappa=2.0, alpha=1.0, gamma=0.5, slate_size=5, intensity="lse"),
        dict(tau=0.2, reweight=False, gamma=0.5, slate_size=5, intensity="margin"),
        dict(tau=0.2, kappa=3.0, alpha=0.5, gamma=0.5, slate_size=5, fn_threshold=0.1),  # folded affinity
        dict(tau=0.2, kappa=2.0, alpha=1.0, max_weight=1.5, fn_threshold=0.0),  # folded hardness, capped
    ],
}
NAMES = LOSSES.names()


def data(dtype=torch.float64, seed=0, b=B, n_items=N_ITEMS, d=D):
    """Unit-norm queries and items (leaves with gradient), positives, groups and excluded pairs:
    each row excludes its positive and a few training positives (duplicates and item 0 among
    them); row 1 excludes every real item, row 3 all but one."""
    g = torch.Generator().manual_seed(seed)

    def unit(n):
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)

    u, items = unit(b), unit(n_items)
    pos_item = torch.randint(1, n_items, (b,), generator=g)
    rows, cols = [], []
    for r in range(b):
        extra = torch.randint(0, n_items, (4,), generator=g).tolist()
        picked = [int(pos_item[r]), int(pos_item[r]), 0] + extra + extra[:2]
        if r == 1:
            picked += list(range(1, n_items))
        if r == 3:
            picked += [j for j in range(1, n_items) if j != 5]
        rows += [r] * len(picked)
        cols += picked
    perm = torch.randperm(len(rows), generator=g)  # Excluded.of must not rely on the input order
    excluded = Excluded.of(torch.tensor(rows)[perm], torch.tensor(cols)[perm])
    group = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 4][:b])
    sim_table = unit(n_items)
    return u.requires_grad_(True), items.requires_grad_(True), pos_item, excluded, group, sim_table


def dense_mask(excluded: Excluded, b: int, n_items: int, first_item: int = 1):
    mask = torch.ones(b, n_items, dtype=torch.bool)
    mask[excluded.rows, excluded.items] = False
    return mask[:, first_item:]


def losses_of(name):
    cls = LOSSES.get(name)
    return [cls(**kw) for kw in CONFIGS.get(name, [{}])]


def dense_loss(loss, u, items, pos_item, excluded, group, sim_table):
    """compute() on the dense [B, n_items - 1] block of every real item, excluded pairs masked."""
    pos = (u * items[pos_item]).sum(dim=1)
    neg = u @ items[1:].T
    mask = dense_mask(excluded, u.shape[0], items.shape[0])
    alpha = loss.needs.affinity_alpha
    affinity = None if alpha is None else mix_affinity(sim_table[pos_item] @ sim_table[1:].T, neg, alpha)
    # no neg_log_q: nothing is sampled, so SL's log-q correction has no q to correct
    ctx = LossContext(user=group, neg_mask=mask, neg_affinity=affinity, n_items=items.shape[0] - 1)
    return loss.compute(pos, neg, ctx)


def full_loss(loss, u, items, pos_item, excluded, group, sim_table, block):
    pos = (u * items[pos_item]).sum(dim=1)
    all_items = AllItems.build(excluded, u.shape[0], items.shape[0], block=block, group=group,
                               pos_item=pos_item, sim_table=sim_table)
    return loss.compute_all(u, items, pos, all_items)


def grads(per_row, u, items, seed=5):
    w = torch.rand(per_row.shape, generator=torch.Generator().manual_seed(seed), dtype=per_row.dtype)
    return torch.autograd.grad((per_row * w).sum(), (u, items))


# ------------------------------------------------------------------------- Excluded and AllItems
def test_excluded_sorts_deduplicates_and_counts():
    ex = Excluded.of(torch.tensor([2, 0, 2, 1, 0, 2, 1]), torch.tensor([5, 3, 5, 0, 3, 1, 7]))
    assert ex.items.tolist() == [0, 1, 3, 5, 7] and ex.rows.tolist() == [1, 2, 0, 2, 1]
    # items 1..7 are real (8 in the table, 0 is padding): row 1's item 0 does not count
    assert ex.counts(4, 8).tolist() == [6, 6, 5, 7]
    assert ex.counts(4, 8, first_item=0).tolist() == [7, 6, 6, 8]
    assert ex.mask(3, torch.tensor([3, 5, 6])).tolist() == [[True, False, False], [False, False, False],
                                                             [False, True, False]]
    empty = Excluded.none()
    assert empty.counts(2, 5).tolist() == [4, 4] and not empty.mask(2, torch.tensor([1, 2])).any()


def test_block_must_be_positive():
    u, items, *_ = data()
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="block"):
            row_lse_all(u, items, lambda s: s, block=bad)
    with pytest.raises(ValueError, match="k must"):
        row_topk_all(u, items, 0)


# ------------------------------------------------------------------ compute_all == dense compute()
@pytest.fixture(params=["kept", "recomputed"])
def backward_mode(request, monkeypatch):
    """Both backward paths of row_lse_all: blocks kept from the forward (small catalogues) and
    blocks recomputed (everything else)."""
    if request.param == "recomputed":
        monkeypatch.setattr(full, "KEEP_CELLS", 0)
    return request.param


@pytest.mark.parametrize("name", NAMES)
def test_compute_all_equals_dense_masked_compute(name, backward_mode):
    u, items, pos_item, excluded, group, sim_table = data(seed=1)
    for loss in losses_of(name):
        if not type(loss).supports_all:
            with pytest.raises(NotImplementedError, match="full-catalogue"):
                full_loss(loss, u, items, pos_item, excluded, group, sim_table, 4)
            continue
        ref = dense_loss(loss, u, items, pos_item, excluded, group, sim_table)
        ref_grads = grads(ref, u, items)
        assert ref[1] == 0  # the row without a valid item
        for block in BLOCKS:
            got = full_loss(loss, u, items, pos_item, excluded, group, sim_table, block)
            torch.testing.assert_close(got, ref, **TOL, msg=lambda m: f"{loss!r} block {block}: {m}")
            for g, r in zip(grads(got, u, items), ref_grads):
                torch.testing.assert_close(g, r, **TOL, msg=lambda m: f"{loss!r} block {block} grad: {m}")


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).supports_all])
def test_forward_all_is_the_mean_over_rows_with_items(name):
    u, items, pos_item, excluded, group, sim_table = data(seed=2)
    loss = losses_of(name)[0]
    per_row = full_loss(loss, u, items, pos_item, excluded, group, sim_table, 4)
    all_items = AllItems.build(excluded, B, N_ITEMS, block=4, group=group, pos_item=pos_item, sim_table=sim_table)
    got = loss.forward_all(u, items, (u * items[pos_item]).sum(1), all_items)
    torch.testing.assert_close(got, per_row.sum() / (B - 1), **TOL)  # one row has no valid item


def test_dsl_diagnostics_match_dense():
    # no empty row here: the dense path's statistics count an empty row's (discarded) weights
    u, items, pos_item, excluded, group, sim_table = data(seed=3)
    keep = excluded.rows != 1
    excluded = Excluded.of(excluded.rows[keep], excluded.items[keep])
    for kw in CONFIGS["DSL"]:
        loss = LOSSES.get("DSL")(**kw)
        dense_loss(loss, u, items, pos_item, excluded, group, sim_table)
        ref = loss.diagnostics()
        full_loss(loss, u, items, pos_item, excluded, group, sim_table, 4)
        got = loss.diagnostics()
        assert set(got) == set(ref), kw
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=0, msg=lambda m: f"{kw} {key}: {m}")


def test_dsl_needs_the_similarity_table():
    u, items, pos_item, excluded, group, _ = data()
    loss = LOSSES.get("DSL")(kappa=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="sim_table"):
        full_loss(loss, u, items, pos_item, excluded, group, None, 4)
    # alpha = 1 (hardness only) needs no similarity
    full_loss(LOSSES.get("DSL")(kappa=2.0, alpha=1.0), u, items, pos_item, excluded, group, None, 4)


# ------------------------------------------------------------------------------- block functions
def psl_phi(s, p):
    return torch.log(torch.clamp(torch.tanh((s - p) / 2) + 1, min=torch.finfo(s.dtype).tiny)) / 0.3


def test_gradcheck_row_lse_all_with_a_row_argument_and_aux(backward_mode):
    g = torch.Generator().manual_seed(7)
    u = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    aux = (torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64))
    ex = Excluded.of(torch.tensor([0, 0, 2, 1]), torch.tensor([3, 0, 8, 4]))

    def phi(s, p, c):
        return psl_phi(s, p) + 0.5 * c

    for block in (1, 4, 16):
        assert torch.autograd.gradcheck(lambda u, it, p: row_lse_all(u, it, psl_phi, (p,), ex, block), (u, items, p))
        assert torch.autograd.gradcheck(lambda u, it, p: row_lse_all(u, it, phi, (p,), ex, block, aux=aux),
                                        (u, items, p))


def test_block_reductions_match_dense():
    u, items, _, excluded, _, _ = data(seed=4)
    s = (u @ items[1:].T).detach()
    mask = dense_mask(excluded, B, N_ITEMS)
    valid = mask.any(dim=1)
    masked = s.masked_fill(~mask, float("-inf"))
    for block in BLOCKS:
        kw = dict(excluded=excluded, block=block)
        lse, hi, lo = row_stats_all(u, items, lambda x: 2 * x, **kw)
        zero = torch.zeros(B, dtype=s.dtype)
        torch.testing.assert_close(lse, torch.where(valid, torch.logsumexp(2 * masked, 1), zero))
        torch.testing.assert_close(hi, (2 * masked).amax(1))
        torch.testing.assert_close(lo, (2 * s).masked_fill(~mask, float("inf")).amin(1))
        torch.testing.assert_close(row_sum_all(u, items, torch.sigmoid, **kw), (torch.sigmoid(s) * mask).sum(1))
        for k in (1, 3, 30):
            ref = torch.topk(masked, min(k, N_ITEMS - 1), dim=1).values
            torch.testing.assert_close(row_topk_all(u, items, k, **kw), ref)
    # first_item=0: the padding row counts as an item too
    torch.testing.assert_close(row_lse_all(u, items, lambda x: x, first_item=0, block=5).detach(),
                               torch.logsumexp((u @ items.T).detach(), 1))


def test_cap_scale_is_the_exact_water_filling():
    # heavy-tailed weights (kappa 8), so that the clipped set grows over several passes
    from recbole_dsl.losses.dsl import _cap_log_weights

    u, items, _, excluded, _, _ = data(seed=8, b=9, n_items=300)
    u, items = u.detach(), items.detach()
    mask = dense_mask(excluded, 9, 300)
    counts = excluded.counts(9, 300)
    a = 8.0 * (u @ items[1:].T)
    o = torch.log(counts.clamp_min(1).double()) - torch.logsumexp(a.masked_fill(~mask, float("-inf")), 1)
    log_w0 = (a + o.unsqueeze(1)).masked_fill(~mask, float("-inf"))
    for cap in (1.0, 1.3, 4.0):
        ref = _cap_log_weights(log_w0, cap, counts)
        for block in (7, 512):
            log_c = cap_log_scale_all(u, items, lambda s: 8.0 * s + o.unsqueeze(1), counts, cap, excluded, block)
            got = torch.clamp_max(log_w0 + log_c.unsqueeze(1), math.log(cap))
            valid = mask & (counts > 0).unsqueeze(1)
            torch.testing.assert_close(got[valid], ref[valid], **TOL)
            w = got.exp() * valid
            torch.testing.assert_close(w.sum(1)[counts > 0], counts[counts > 0].double(), **TOL)
            assert w.max() <= cap * (1 + 1e-12)


@pytest.mark.parametrize("tau", [0.005, 5.0])
@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).supports_all])
def test_extreme_temperatures_are_finite(name, tau):
    u, items, pos_item, excluded, group, sim_table = data(dtype=torch.float32, seed=6)
    cls = LOSSES.get(name)
    kw = {"BSL": dict(tau_pos=tau, tau_neg=tau), "DSL": dict(tau=tau, kappa=2.0, gamma=0.5, max_weight=2.0,
                                                           slate_size=4)}.get(name, dict(tau=tau))
    loss = cls(**kw)
    got = full_loss(loss, u, items, pos_item, excluded, group, sim_table, 4)
    g = grads(got, u, items)
    assert torch.isfinite(got).all() and all(torch.isfinite(x).all() for x in g)
    ref = dense_loss(loss, u, items, pos_item, excluded, group, sim_table)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 / min(tau, 1.0))


# -------------------------------------------------------------------------------- memory bound
class TensorSizes(TorchDispatchMode):
    """Every tensor an operator allocates while the mode is on, forward and backward alike (the
    autograd engine carries the mode into its backward): the largest one's size, and the peak of
    the bytes held by the freshly allocated ones still alive (a tensor counts until it is freed;
    views allocate nothing and are not counted). Dispatch sits below autograd, so this sees the
    temporaries autograd and the custom backward create, not only what Python code names. (CPU
    tensors have no allocator statistics, torch.cuda.max_memory_allocated is GPU-only, and the
    process's RSS is too coarse and noisy for a bound.)"""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, t in zip(func._schema.returns, outs):
            if isinstance(t, torch.Tensor) and ret.alias_info is None:
                nbytes = t.numel() * t.element_size()
                self.largest = max(self.largest, t.numel())
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out

    def _free(self, nbytes):
        self.live -= nbytes


# A dense [B, n_items] block would be 100 MB. The item table's gradient is dense whatever the loss
# (n_items x d, 3.2 MB here; autograd holds up to three of them at once: the indexed positives'
# gradient, this function's and their sum), so the bound allows three of those plus ten blocks.
MEMORY_CASE = dict(b=256, n_items=100_000, d=8, block=1024)


def memory_bound(b, n_items, d, block):
    return 4 * (3 * n_items * d + 10 * b * block)


def big_catalogue(b, n_items, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, generator=g).div_(4).requires_grad_(True)
    items = torch.randn(n_items, d, generator=g).div_(4).requires_grad_(True)
    excluded = Excluded.of(torch.randint(0, b, (20_000,), generator=g),
                           torch.randint(0, n_items, (20_000,), generator=g))
    return g, u, items, excluded


def test_memory_stays_blockwise():
    b, n_items, d, block = MEMORY_CASE.values()
    g, u, items, excluded = big_catalogue(b, n_items, d)
    p = torch.randn(b, generator=g).requires_grad_(True)
    dense_bytes = b * n_items * 4
    saved = []

    def pack(t):  # what autograd keeps for the backward
        saved.append(t.numel())
        return t

    with TensorSizes() as sizes:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            # a cheap phi with a row argument (PSL's tanh and log cost seconds on 2 CPU cores here)
            lse = row_lse_all(u, items, lambda s, q: (s - q) * 10.0, (p,), excluded, block)
        lse.sum().backward()
    assert torch.isfinite(lse).all() and torch.isfinite(items.grad).all() and torch.isfinite(p.grad).all()
    # No [B, n_items] block, nor a quarter of one: the largest tensor is the item table's gradient
    # (n_items x d) or one [B, block] block.
    assert sizes.largest <= max(n_items * d, b * block), sizes.largest
    # Alive at once: the item table's gradient and a few [B, block] temporaries (phi's graph while
    # one block's backward runs), a fraction of one dense block.
    assert sizes.peak <= memory_bound(b, n_items, d, block) < dense_bytes / 4, (sizes.peak, dense_bytes)
    # what the forward leaves for the backward: the inputs and the [B] result, no block
    assert sorted(saved) == sorted([b * d, n_items * d, b, b]), saved


def test_dsl_memory_stays_blockwise():
    # every pass of DSL (top-K slate, normaliser, cap, loss) on the large catalogue
    b, n_items, d, block = MEMORY_CASE.values()
    g, u, items, excluded = big_catalogue(b, n_items, d)
    pos_item = torch.randint(1, n_items, (b,), generator=g)
    sim_table = torch.nn.functional.normalize(items.detach(), dim=1)
    all_items = AllItems.build(excluded, b, n_items, block=block, pos_item=pos_item, sim_table=sim_table)
    loss = LOSSES.get("DSL")(tau=0.2, kappa=2.0, alpha=0.5, gamma=0.5, slate_size=20, max_weight=3.0)
    with TensorSizes() as sizes:
        per_row = loss.compute_all(u, items, (u * items[pos_item]).sum(1), all_items)
        per_row.sum().backward()
    assert torch.isfinite(per_row).all() and torch.isfinite(items.grad).all()
    assert sizes.largest <= max(n_items * d, b * (block + 20)), sizes.largest
    assert sizes.peak <= memory_bound(b, n_items, d, block) < b * n_items * 4 / 4, sizes.peak


def test_memory_check_sees_a_dense_block():
    # the control: the same measurement on the dense computation reports the [B, n_items] block
    b, n_items, d, block = MEMORY_CASE.values()
    _, u, items, _ = big_catalogue(b, n_items, d)
    with TensorSizes() as sizes:
        torch.logsumexp(u @ items.T, dim=1).sum().backward()
    assert sizes.largest >= b * n_items and sizes.peak > memory_bound(b, n_items, d, block)
