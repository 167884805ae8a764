"""Graph adapters: embedding models whose representations come from propagating the interaction
graph (LightGCN, NGCF, SpectralCF, DGCF, SGL, NCL). Each training step propagates once; evaluation
propagates once per evaluation pass (cached by the embedding adapter)."""
from __future__ import annotations

from logging import getLogger
from types import MethodType
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.adapters.base import ADAPTERS, ego_reg
from recbole_dsl.adapters.embedding import EmbeddingAdapter
from recbole_dsl.adapters.graph_ops import OperatorCache, light_propagate


class PropagationAdapter(EmbeddingAdapter):
    """Graph models whose forward() propagates the whole graph and returns (users, items)."""

    def propagate(self):
        return self.model.forward()

    def user_item(self, rows):
        users, items = self.propagate()[:2]
        return users[rows.user], items, {"users": users, "items": items}

    def all_reps(self):
        return tuple(self.propagate()[:2])


class LightPropagationAdapter(PropagationAdapter):
    """LightGCN-style models (their forward: mean over layers of adjacency @ embeddings): the
    plugin propagates itself, with the model's adjacency in CSR (graph_ops.SparseOperator), the
    same result as the model's forward at a fraction of its COO products' cost."""

    adjacency = "norm_adj_matrix"  # the model attribute holding its normalised adjacency

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        self.operators = OperatorCache()

    def ego(self) -> Tensor:
        return self.model.get_ego_embeddings()

    def layers(self, graph, n_propagations: Optional[int] = None, n_mean: Optional[int] = None):
        """(users, items, every layer): a graph (as many propagations as the model's n_layers, or
        n_propagations) or a list of graphs (one per layer, SGL's random walks), over the ego
        embeddings; the mean runs over the first n_mean + 1 layers (default: all)."""
        m = self.model
        if isinstance(graph, (list, tuple)):
            ops = [self.operators(g) for g in graph]
        else:
            ops = [self.operators(graph)] * (m.n_layers if n_propagations is None else n_propagations)
        mean, layers = light_propagate(ops, self.ego(), n_mean)
        users, items = torch.split(mean, [m.n_users, m.n_items])
        return users, items, layers

    def propagate(self):
        return self.layers(getattr(self.model, self.adjacency))[:2]


@ADAPTERS.register("LightGCN")
class LightGCNAdapter(LightPropagationAdapter):
    """LightGCN: its L2 term on the ego embeddings (with its require_pow) is kept."""

    def aux_losses(self, out, rows, neg_item):
        return {"reg": ego_reg(self.model, rows, neg_item, require_pow=self.model.require_pow)}


@ADAPTERS.register("NGCF")
@ADAPTERS.register("SpectralCF")
class PropagatedRegAdapter(PropagationAdapter):
    """NGCF, SpectralCF: their L2 term is on the propagated embeddings of the batch."""

    def aux_losses(self, out, rows, neg_item):
        users, items = out.state["users"], out.state["items"]
        reg = self.model.reg_loss(users[rows.user], items[rows.pos_item], items[neg_item[:, 0]])
        return {"reg": self.model.reg_weight * reg}


@ADAPTERS.register("DGCF")
class DGCFAdapter(PropagationAdapter):
    """DGCF: L2 term on the ego embeddings, plus its distance-correlation (independence) term on
    randomly drawn users and items, when the model's own loss has it (n_factors > 1, cor_weight > 0)."""

    def aux_losses(self, out, rows, neg_item):
        from recbole.model.general_recommender.dgcf import sample_cor_samples

        m = self.model
        parts = {"reg": ego_reg(m, rows, neg_item)}
        if m.n_factors > 1 and m.cor_weight > 1e-9:
            # DGCF's own draw fails when cor_batch_size exceeds the users or the items (small data).
            size = min(m.cor_batch_size, m.n_users, m.n_items)
            cu, ci = sample_cor_samples(m.n_users, m.n_items, size)
            cu = torch.as_tensor(cu, dtype=torch.long, device=m.device)
            ci = torch.as_tensor(ci, dtype=torch.long, device=m.device)
            parts["cor"] = m.cor_weight * m.create_cor_loss(out.state["users"][cu], out.state["items"][ci])
        return parts


@ADAPTERS.register("SGL")
class SGLAdapter(LightPropagationAdapter):
    """SGL: propagation on the training graph; its L2 term and its InfoNCE term over the two
    perturbed subgraphs (calc_ssl_loss, with ssl_weight) are kept."""

    reduction = "sum"  # SGL's own BPR term is summed over the batch (calc_bpr_loss)

    adjacency = "train_graph"

    def ego(self) -> Tensor:
        return torch.cat([self.model.user_embedding.weight, self.model.item_embedding.weight])

    def aux_losses(self, out, rows, neg_item):
        m = self.model
        u1, i1 = self.layers(m.sub_graph1)[:2]  # rebuilt by SGL's train() every epoch
        u2, i2 = self.layers(m.sub_graph2)[:2]
        ssl = m.calc_ssl_loss(rows.user, rows.pos_item, u1, u2, i1, i2)
        return {"reg": ego_reg(m, rows, neg_item), "ssl": ssl}


def torch_kmeans(x: Tensor, k: int, niter: int = 25) -> Tuple[Tensor, Tensor]:
    """Lloyd's k-means (random initial centroids drawn from the points, torch's RNG); returns
    (centroids [k, d], assignment [n])."""
    n = x.shape[0]
    k = max(1, min(int(k), n))
    cent = x[torch.randperm(n, device=x.device)[:k]].clone()
    for _ in range(niter):
        assign = torch.cdist(x, cent).argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        cent = torch.where(counts > 0, sums / counts.clamp(min=1), cent)  # empty clusters keep theirs
    return cent, torch.cdist(x, cent).argmin(1)


def ncl_run_kmeans_torch(self, x):
    """NCL.run_kmeans without faiss (same contract: normalised centroids, node -> cluster)."""
    cent, assign = torch_kmeans(torch.as_tensor(x, device=self.device), self.k)
    return F.normalize(cent, p=2, dim=1), assign


@ADAPTERS.register("NCL")
class NCLAdapter(LightPropagationAdapter):
    """NCL: its L2 term, its structure-contrastive term (ssl_layer_loss) and its prototype term
    (ProtoNCE_loss, last, so NCLTrainer leaves it out during warm_up_step epochs) are kept; the
    prototypes come from NCLTrainer's E-step. Without faiss installed, the E-step's k-means runs
    in torch (Lloyd, 25 iterations, as many clusters as points at most)."""

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        try:
            import faiss  # noqa: F401
        except ImportError:
            getLogger().info("NCL: faiss is not installed; the E-step's k-means runs in torch")
            # NCLTrainer calls model.e_step() -> model.run_kmeans: the one method to replace.
            model.run_kmeans = MethodType(ncl_run_kmeans_torch, model)

    def propagate(self):
        m = self.model
        return self.layers(m.norm_adj_mat, max(m.n_layers, m.hyper_layers * 2), m.n_layers)

    def user_item(self, rows):
        users, items, layers = self.propagate()
        return users[rows.user], items, {"layers": layers}

    def aux_losses(self, out, rows, neg_item):
        m = self.model
        if m.user_2cluster is None:
            raise RuntimeError("NCL: the prototypes are missing; NCLTrainer.fit runs the E-step (model.e_step()) "
                               "before the first epoch")
        layers = out.state["layers"]
        center, context = layers[0], layers[m.hyper_layers * 2]
        ssl = m.ssl_layer_loss(context, center, rows.user, rows.pos_item)
        proto = m.ProtoNCE_loss(center, rows.user, rows.pos_item)
        return {"reg": ego_reg(m, rows, neg_item), "ssl": ssl, "proto": proto}
