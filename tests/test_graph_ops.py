"""The CSR propagation of LightGCN-style models (adapters/graph_ops.py): the product and its
gradient against dense algebra (the adapters' propagation against the models' own forward is in
test_models.py)."""
import pytest
import torch

from recbole_dsl.adapters.graph_ops import OperatorCache, SparseOperator, light_propagate


def _random_sparse(n, m, density, seed, symmetric=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, m, generator=g, dtype=dtype) * (torch.rand(n, m, generator=g) < density)
    if symmetric:
        dense = dense.triu() + dense.triu(1).T
    return dense, dense.to_sparse()


@pytest.mark.parametrize("symmetric", [True, False])
def test_product_and_gradient_equal_dense_algebra(symmetric):
    n = 30
    m = n if symmetric else 17
    dense, sparse = _random_sparse(n, m, 0.2, seed=1, symmetric=symmetric)
    op = SparseOperator(sparse)
    assert op.symmetric is symmetric
    x = torch.randn(m, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, 5, dtype=torch.float64)
    y = op(x)
    torch.testing.assert_close(y, dense @ x)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, dense.T @ g)
    assert torch.autograd.gradcheck(op, (x,))


def test_a_square_matrix_that_is_not_symmetric_uses_its_transpose():
    dense, sparse = _random_sparse(12, 12, 0.3, seed=2)
    dense[0, 1], dense[1, 0] = 1.0, 2.0  # certainly not symmetric
    op = SparseOperator(dense.to_sparse())
    assert not op.symmetric
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(op(x).sum(), x)
    torch.testing.assert_close(gx, dense.T @ torch.ones(12, 3, dtype=torch.float64))


def test_a_dtype_mismatch_is_an_error_not_a_silent_cast():
    _, sparse = _random_sparse(5, 5, 0.5, seed=3, dtype=torch.float32)
    with pytest.raises(TypeError, match="float64"):
        SparseOperator(sparse)(torch.ones(5, 2, dtype=torch.float64))


def test_light_propagate_is_the_mean_over_layers_and_keeps_every_layer():
    dense, sparse = _random_sparse(20, 20, 0.2, seed=4, symmetric=True)
    op = SparseOperator(sparse)
    ego = torch.randn(20, 4, dtype=torch.float64)
    mean, layers = light_propagate([op] * 4, ego, n_mean=2)
    ref = [ego]
    for _ in range(4):
        ref.append(dense @ ref[-1])
    assert len(layers) == 5
    for a, b in zip(layers, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(mean, (ref[0] + ref[1] + ref[2]) / 3)
    torch.testing.assert_close(light_propagate([op] * 4, ego)[0], sum(ref) / 5)


def test_operator_cache_builds_once_per_matrix_and_forgets_dropped_ones():
    import gc

    cache = OperatorCache()
    _, a = _random_sparse(10, 10, 0.3, seed=5, symmetric=True)
    assert cache(a) is cache(a) and len(cache) == 1
    _, b = _random_sparse(10, 10, 0.3, seed=6, symmetric=True)
    op_b = cache(b)
    assert op_b is not cache(a) and len(cache) == 2
    del b
    gc.collect()
    assert len(cache) == 1  # the dropped matrix's operator is not kept for it
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(cache(a)(x), a.to_dense() @ x)
