"""The hand-written autograd kernels of the score path and the losses, against the composed torch
ops they replace: values, gradients (gradcheck in float64), masks, duplicates and extremes."""
import pytest
import torch
import torch.nn.functional as F

import recbole_dsl.scoring as scoring
from recbole_dsl.losses.lse import scaled_logsumexp
from recbole_dsl.scoring import gather_all_scores, normalize, sampled_scores

D64 = dict(dtype=torch.float64)


def rand(*shape, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, **D64).requires_grad_(grad)


def test_sampled_scores_match_gathered_rows_with_duplicates():
    u, items = rand(6, 4), rand(9, 4, seed=1)
    idx = torch.tensor([[1, 1, 1], [0, 8, 8], [2, 3, 4], [5, 5, 0], [7, 6, 5], [8, 8, 8]])  # repeats in rows
    got = sampled_scores(u, items, idx)
    ref = torch.bmm(items[idx], u.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(got, ref)
    g = torch.randn(6, 3, **D64)
    torch.testing.assert_close(torch.autograd.grad(got, (u, items), g), torch.autograd.grad(ref, (u, items), g))
    assert torch.autograd.gradcheck(lambda a, b: sampled_scores(a, b, idx), (u, items))


def test_sampled_scores_float32_and_empty():
    u, items = rand(5, 3).float(), rand(7, 3, seed=1).float()
    idx = torch.randint(0, 7, (5, 11))
    torch.testing.assert_close(sampled_scores(u, items, idx), (u @ items.t()).gather(1, idx))
    assert sampled_scores(u, items, idx[:, :0]).shape == (5, 0)


@pytest.mark.parametrize("cells", [1 << 24, 7, 1])  # one block, several row blocks, one row per block
def test_full_path_in_row_blocks(monkeypatch, cells):
    monkeypatch.setattr(scoring, "FULL_BLOCK_CELLS", cells)
    u, items = rand(9, 3), rand(13, 3, seed=1)
    idx = torch.randint(0, 13, (9, 5), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(gather_all_scores(u, items, idx), (u @ items.t()).gather(1, idx))
    assert torch.autograd.gradcheck(lambda a, b: gather_all_scores(a, b, idx), (u, items))


def test_normalize_matches_f_normalize():
    x = rand(8, 5)
    g = torch.randn(8, 5, **D64)
    torch.testing.assert_close(normalize(x), F.normalize(x, dim=-1))
    torch.testing.assert_close(torch.autograd.grad(normalize(x), x, g)[0],
                               torch.autograd.grad(F.normalize(x, dim=-1), x, g)[0])
    assert torch.autograd.gradcheck(normalize, (x,))
    with torch.no_grad():
        zero = torch.zeros(2, 3)
        assert torch.equal(normalize(zero), zero)  # no NaN for zero rows, as F.normalize


def reference_lse(x, scale, offset, mask):
    z = x * scale
    if offset is not None:
        z = z - offset
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(z, dim=1)


@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("row_scale", [False, True])
def test_scaled_logsumexp_matches_composed_ops(with_offset, row_scale):
    x = rand(6, 7)
    scale = torch.rand(6, 1, **D64) * 10 + 0.1 if row_scale else 3.7
    offset = torch.randn(6, 7, **D64) if with_offset else None
    mask = torch.rand(6, 7, generator=torch.Generator().manual_seed(3)) < 0.6
    mask[0] = True
    mask[1] = False  # a row without a valid entry: -inf and no gradient
    keep = torch.arange(6) != 1
    got = scaled_logsumexp(x, scale, offset, mask)
    # The reference leaves the all-masked row out: torch's logsumexp backward is NaN there.
    ref = reference_lse(x[keep], scale[keep] if row_scale else scale, None if offset is None else offset[keep],
                        mask[keep])
    assert got[1] == float("-inf")
    torch.testing.assert_close(got[keep], ref)
    g = torch.randn(6, **D64) * keep
    gx = torch.autograd.grad(got, x, g)[0]
    torch.testing.assert_close(gx[keep], torch.autograd.grad(ref, x, g[keep])[0][keep])
    assert torch.all(gx[1] == 0)
    assert torch.autograd.gradcheck(lambda a: scaled_logsumexp(a, scale, offset, mask)[keep], (x,))


@pytest.mark.parametrize("tau", [0.001, 1e3])
def test_scaled_logsumexp_finite_at_extreme_temperatures(tau):
    x = (torch.rand(4, 50) * 2 - 1).requires_grad_()
    out = scaled_logsumexp(x, 1 / tau)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out, torch.logsumexp(x.detach() / tau, 1))


def test_scaled_logsumexp_without_grad_leaves_input_alone():
    x = torch.randn(3, 4)
    before = x.clone()
    with torch.no_grad():
        out = scaled_logsumexp(x, 2.0)
    assert torch.equal(x, before)
    torch.testing.assert_close(out, torch.logsumexp(2 * x, 1))
