"""Score adapters: how the plugin gets the scores of a training batch out of a RecBole model.

One adapter per *kind* of model, chosen through the ADAPTERS registry keyed by the RecBole model
name; a model whose inputs or auxiliary terms need their own code gets its own subclass, named
after it. Every kind runs the model's forward pass once per batch:

- ``embedding`` (BPR/MF, LightGCN, NGCF, DGCF, SGL, NCL, SpectralCF, SimpleX, DMF, FISM, ENMF):
  the model's score is a product of a user representation and an item representation. The
  adapter returns the batch users' representations and the whole item table; the scoring path
  (scoring.py) applies ``score_fn`` and picks the positive and negative columns (one matrix
  product against all items, or a gather of the N negatives). Evaluation uses the same path.
- ``logits`` (MultiVAE, MultiDAE, MacridVAE, RecVAE, RaCT, CDAE): the model outputs a
  [B_users, n_items] row of logits per user; the loss takes the positive and negative columns.
  ``score_fn`` does not apply (the logits are the scores); evaluation is the model's own.
- ``pair`` (NeuMF, ConvNCF, NAIS, NNCF): the model scores (user, item) pairs with no factorised
  form. The B x (1 + N) pairs of a batch are built once and scored by one call of the model's
  forward; the score path is always ``gather`` (only those pairs are scored); ``pair_score_fn``
  (tanh by default) bounds the logits instead of ``score_fn``; evaluation is the model's own.

Models that RecBole trains on its UserDataLoader (the autoencoders and ENMF) get batches of users,
not interactions. Their training rows are the (user, positive item) pairs of the batch users'
histories (the non-zero entries of the batch's rating matrix), expanded in one vectorised step;
when a batch holds more than ``MAX_USER_ROW_CELLS / (1 + neg_num)`` such rows a uniform random
subset of that size is used (a fresh one every batch), which bounds the [rows, 1 + N] score block.
BSL's positive groups are random chunks of up to ``positives_per_user`` rows of one user, as
``train_batch_mode: user`` makes them for interaction batches.

Each adapter also returns the model's own auxiliary terms (L2 terms, contrastive terms, KL terms,
...), computed by the model's own helpers at the scale its own calculate_loss gives them for a
batch of the same positives; only the recommendation term is replaced. Where the model's own term
takes "the" negative of a pairwise batch, the first of the N sampled negatives plays that role.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from logging import getLogger
from types import MethodType
from typing import Any, ClassVar, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.errors import ConfigError
from recbole_dsl.registry import Registry
from recbole_dsl.scoring import FULL_PATH_RATIO, all_item_scores, batch_scores, mix_affinity, pair_logit_scores

ADAPTERS: Registry = Registry("model")

# Upper bound on the [rows, 1 + N] score block of a user-level batch (autoencoders, ENMF).
MAX_USER_ROW_CELLS = 1 << 24


@dataclass
class Rows:
    """The training rows of a batch: one (user, positive item) pair per row."""

    user: Tensor  # [R]
    pos_item: Tensor  # [R]
    # User-level batches (RecBole's UserDataLoader): the batch's users [B_u], and for each row the
    # index of its user in batch_user [R]. None for interaction batches.
    batch_user: Optional[Tensor] = None
    row_of: Optional[Tensor] = None
    # Positives of the batch before any cap on the rows (user-level batches); None: len(user).
    n_positives: Optional[int] = None
    # User-level batches: BSL's positive groups ([R] ids; rows with the same id share the
    # positive side), random chunks of up to positives_per_user rows of one user. None: by user.
    group: Optional[Tensor] = None

    @property
    def total(self) -> int:
        return int(self.user.shape[0]) if self.n_positives is None else self.n_positives


@dataclass
class Forward:
    """What one forward pass of the model gave for a batch."""

    user_e: Optional[Tensor] = None  # embedding kind: [R, d] (or [B_u, d] for user-level batches)
    items: Optional[Tensor] = None  # embedding kind: [n_items, d]
    scores: Optional[Tensor] = None  # logits kind: [B_u, n_items]; pair kind: [R, 1 + N]
    state: Dict[str, Any] = field(default_factory=dict)  # whatever the auxiliary terms need


def item_similarity(table: Tensor, pos_item: Tensor, neg_item: Tensor, chunk: int = 8192) -> Tensor:
    """[R, N] cosine similarity of each row's positive item to its negatives (no gradient), from an
    item representation table [n_items, d]; for DSL's reweighting."""
    with torch.no_grad():
        t = F.normalize(table.detach().float(), dim=-1)
        n = neg_item.shape[1]
        out = []
        for s in range(0, pos_item.shape[0], chunk):
            p, q = pos_item[s:s + chunk], neg_item[s:s + chunk]
            if t.shape[0] <= FULL_PATH_RATIO * n:
                out.append((t[p] @ t.t()).gather(1, q))
            else:
                out.append(torch.bmm(t[q], t[p].unsqueeze(2)).squeeze(2))
        return torch.cat(out, 0) if out else torch.zeros_like(neg_item, dtype=t.dtype)


def _chunk_groups(row_of: Tensor, k: int) -> Tensor:
    """[R] group ids: each user's rows (row_of, sorted) cut at random into chunks of up to k rows,
    as train_batch_mode: user groups the positives of interaction batches."""
    n = row_of.numel()
    if n == 0:
        return row_of
    order = torch.randperm(n, device=row_of.device)
    order = order[torch.argsort(row_of[order], stable=True)]  # by user, random within a user
    starts = torch.searchsorted(row_of, row_of[order])  # row_of is sorted: first row of each user
    rank = torch.arange(n, device=row_of.device) - starts
    chunks_per_user = (n + k - 1) // k + 1
    group = torch.empty_like(row_of)
    group[order] = row_of[order] * chunks_per_user + rank // k
    return group


def _per_user(fn, user: Tensor) -> Tensor:
    """fn(unique users)[row]: history-based user representations are computed once per distinct
    user of the batch, not once per row."""
    uniq, inv = torch.unique(user, return_inverse=True)
    return fn(uniq)[inv]


class Adapter:
    """Base class; subclasses set ``kind`` and implement ``forward`` (one pass per batch)."""

    kind: ClassVar[str] = ""
    # True for models RecBole trains on its UserDataLoader (batches of users).
    user_batches: ClassVar[bool] = False
    # The model's own evaluation caches, cleared on every training step.
    caches: ClassVar[Tuple[str, ...]] = ("restore_user_e", "restore_item_e")
    # How the model's own loss reduces its recommendation term over a batch, kept for the
    # replacing loss so that the model's weights on its auxiliary terms keep their meaning:
    # "mean" over rows, "sum" over rows, or "user_sum" (summed over each user's positives,
    # averaged over the batch users: the autoencoders' multinomial likelihood).
    reduction: ClassVar[str] = "mean"

    # -- set-up ---------------------------------------------------------------------------
    def check_config(self, config) -> None:
        """Refuse settings of the model a loss swap cannot apply to (before the model is built)."""

    def setup(self, model, dataset, settings) -> None:
        """Once, after the model is built (settings: the plugin's RecLossSettings)."""
        if self.user_batches:
            hist, _, lens = dataset.history_item_matrix()
            model._rl_hist_items = hist.to(model.device)
            model._rl_hist_lens = lens.to(model.device)
            model._rl_max_rows = max(1, MAX_USER_ROW_CELLS // (1 + int(settings.neg_num)))
            model._rl_group_size = int(settings.positives_per_user)

    def clear_caches(self, model) -> None:
        for name in self.caches:
            if getattr(model, name, None) is not None:
                setattr(model, name, None)

    # -- training -------------------------------------------------------------------------
    def rows(self, model, interaction) -> Rows:
        if not self.user_batches:
            return Rows(interaction[model.USER_ID], interaction[model.ITEM_ID])
        batch_user = interaction[model.USER_ID]
        hist = model._rl_hist_items[batch_user]  # [B_u, H]
        valid = torch.arange(hist.shape[1], device=hist.device) < model._rl_hist_lens[batch_user].unsqueeze(1)
        row_of, col = valid.nonzero(as_tuple=True)
        n_positives = int(row_of.numel())
        if n_positives > model._rl_max_rows:
            keep = torch.randperm(n_positives, device=row_of.device)[: model._rl_max_rows].sort().values
            row_of, col = row_of[keep], col[keep]
        return Rows(batch_user[row_of], hist[row_of, col], batch_user, row_of, n_positives,
                    _chunk_groups(row_of, model._rl_group_size))

    def forward(self, model, rows: Rows, neg_item: Tensor, **kwargs) -> Forward:
        raise NotImplementedError

    def rec_scale(self, model, rows: Rows) -> float:
        """Factor turning the loss's mean over rows into the model's own reduction."""
        if self.reduction == "sum":
            return float(rows.total)
        if self.reduction == "user_sum":
            return rows.total / float(rows.batch_user.shape[0])
        return 1.0

    def scores(self, model, out: Forward, rows: Rows, neg_item: Tensor, score_fn: str, path: str,
               with_item_sim: bool, sim_alpha: Optional[float] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(pos [R], neg [R, N], item_sim [R, N] or None) of the batch's rows; with ``sim_alpha``
        the third is the similarity mixed with the scores (`recbole_dsl.scoring.mix_affinity`)."""
        raise NotImplementedError

    def aux_losses(self, model, out: Forward, rows: Rows, neg_item: Tensor) -> Tuple[Tensor, ...]:
        return ()

    def aux_names(self, model) -> Tuple[str, ...]:
        """Names of the auxiliary loss parts this model instance returns, in order."""
        return ()

    def sim_table(self, model) -> Tensor:
        """An item representation table [n_items, d] for DSL's item-item similarity."""
        raise NotImplementedError


def _pick_rows(table: Tensor, rows: Rows, neg_item: Tensor) -> Tuple[Tensor, Tensor]:
    """Positive and negative columns of each row's user in a [B_u, n_items] score table."""
    cols = torch.cat([rows.pos_item.unsqueeze(1), neg_item], dim=1)
    picked = table[rows.row_of.unsqueeze(1), cols]  # [R, 1 + N]
    return picked[:, 0], picked[:, 1:]


# ===================================================================================== embedding
class EmbeddingAdapter(Adapter):
    """Models whose score is user_rep . item_rep with a lookup table per side (BPR, i.e. MF)."""

    kind = "embedding"

    def user_item(self, model, rows: Rows) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
        """Training representations: (users of the rows [R, d] (or of batch_user [B_u, d] for
        user-level batches), item table [n_items, d], state for the auxiliary terms)."""
        return model.user_embedding(rows.user), model.item_embedding.weight, {}

    def all_reps(self, model) -> Tuple[Optional[Tensor], Tensor]:
        """Evaluation representations, cached by the recommender until the next training step:
        (every user's [n_users, d] or None when users are computed per batch, every item's)."""
        return model.user_embedding.weight, model.item_embedding.weight

    def user_reps(self, model, user: Tensor) -> Tensor:
        """Evaluation user representations [B, d] when all_reps gives no user table."""
        raise NotImplementedError

    def forward(self, model, rows, neg_item, **kwargs):
        user_e, items, state = self.user_item(model, rows)
        return Forward(user_e=user_e, items=items, state=state)

    def scores(self, model, out, rows, neg_item, score_fn, path, with_item_sim, sim_alpha=None):
        if rows.row_of is None:
            return batch_scores(out.user_e, out.items, rows.pos_item, neg_item, score_fn=score_fn, path=path,
                                with_item_sim=with_item_sim, sim_alpha=sim_alpha)
        # User-level batches: one [B_u, n_items] product, then each row's columns.
        pos, neg = _pick_rows(all_item_scores(out.user_e, out.items, score_fn), rows, neg_item)
        sim = item_similarity(out.items, rows.pos_item, neg_item) if with_item_sim else None
        return pos, neg, mix_affinity(sim, neg, sim_alpha)

    def sim_table(self, model):
        return self.all_reps(model)[1]


def _ego_reg(model, rows: Rows, neg_item: Tensor, require_pow=None) -> Tensor:
    """The model's EmbLoss on the ego (layer-0) embeddings of (user, positive, "the" negative)."""
    kw = {} if require_pow is None else {"require_pow": require_pow}
    return model.reg_weight * model.reg_loss(
        model.user_embedding(rows.user), model.item_embedding(rows.pos_item),
        model.item_embedding(neg_item[:, 0]), **kw,
    )


class PropagationAdapter(EmbeddingAdapter):
    """Graph models whose forward() propagates the whole graph and returns (users, items)."""

    def propagate(self, model):
        return model.forward()

    def user_item(self, model, rows):
        users, items = self.propagate(model)[:2]
        return users[rows.user], items, {"users": users, "items": items}

    def all_reps(self, model):
        return tuple(self.propagate(model)[:2])


class LightGCNAdapter(PropagationAdapter):
    """LightGCN: its L2 term on the ego embeddings (with its require_pow) is kept."""

    def aux_losses(self, model, out, rows, neg_item):
        return (_ego_reg(model, rows, neg_item, require_pow=model.require_pow),)

    def aux_names(self, model):
        return ("reg",)


class PropagatedRegAdapter(PropagationAdapter):
    """NGCF, SpectralCF: their L2 term is on the propagated embeddings of the batch."""

    def aux_losses(self, model, out, rows, neg_item):
        users, items = out.state["users"], out.state["items"]
        reg = model.reg_loss(users[rows.user], items[rows.pos_item], items[neg_item[:, 0]])
        return (model.reg_weight * reg,)

    def aux_names(self, model):
        return ("reg",)


class DGCFAdapter(PropagationAdapter):
    """DGCF: L2 term on the ego embeddings, plus its distance-correlation (independence) term on
    randomly drawn users and items, when the model's own loss has it (n_factors > 1, cor_weight > 0)."""

    @staticmethod
    def _has_cor(model) -> bool:
        return model.n_factors > 1 and model.cor_weight > 1e-9

    def aux_losses(self, model, out, rows, neg_item):
        from recbole.model.general_recommender.dgcf import sample_cor_samples

        parts = [_ego_reg(model, rows, neg_item)]
        if self._has_cor(model):
            # DGCF's own draw fails when cor_batch_size exceeds the users or the items (small data).
            size = min(model.cor_batch_size, model.n_users, model.n_items)
            cu, ci = sample_cor_samples(model.n_users, model.n_items, size)
            cu = torch.as_tensor(cu, dtype=torch.long, device=model.device)
            ci = torch.as_tensor(ci, dtype=torch.long, device=model.device)
            parts.append(model.cor_weight * model.create_cor_loss(out.state["users"][cu], out.state["items"][ci]))
        return tuple(parts)

    def aux_names(self, model):
        return ("reg", "cor") if self._has_cor(model) else ("reg",)


class SGLAdapter(PropagationAdapter):
    """SGL: propagation on the training graph; its L2 term and its InfoNCE term over the two
    perturbed subgraphs (calc_ssl_loss, with ssl_weight) are kept."""

    reduction = "sum"  # SGL's own BPR term is summed over the batch (calc_bpr_loss)

    def propagate(self, model):
        return model.forward(model.train_graph)

    def aux_losses(self, model, out, rows, neg_item):
        u1, i1 = model.forward(model.sub_graph1)
        u2, i2 = model.forward(model.sub_graph2)
        ssl = model.calc_ssl_loss(rows.user, rows.pos_item, u1, u2, i1, i2)
        return _ego_reg(model, rows, neg_item), ssl

    def aux_names(self, model):
        return ("reg", "ssl")


def _torch_kmeans(x: Tensor, k: int, niter: int = 25) -> Tuple[Tensor, Tensor]:
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


def _ncl_run_kmeans_torch(self, x):
    """NCL.run_kmeans without faiss (same contract: normalised centroids, node -> cluster)."""
    cent, assign = _torch_kmeans(torch.as_tensor(x, device=self.device), self.k)
    return F.normalize(cent, p=2, dim=1), assign


class NCLAdapter(PropagationAdapter):
    """NCL: its L2 term, its structure-contrastive term (ssl_layer_loss) and its prototype term
    (ProtoNCE_loss, last, so NCLTrainer leaves it out during warm_up_step epochs) are kept; the
    prototypes come from NCLTrainer's E-step. Without faiss installed, the E-step's k-means runs
    in torch (Lloyd, 25 iterations, as many clusters as points at most)."""

    def setup(self, model, dataset, settings):
        super().setup(model, dataset, settings)
        try:
            import faiss  # noqa: F401
        except ImportError:
            getLogger().info("NCL: faiss is not installed; the E-step's k-means runs in torch")
            model.run_kmeans = MethodType(_ncl_run_kmeans_torch, model)

    def user_item(self, model, rows):
        users, items, layers = model.forward()
        return users[rows.user], items, {"layers": layers}

    def aux_losses(self, model, out, rows, neg_item):
        if model.user_2cluster is None:
            raise RuntimeError("NCL: the prototypes are missing; NCLTrainer.fit runs the E-step (model.e_step()) "
                               "before the first epoch")
        layers = out.state["layers"]
        center, context = layers[0], layers[model.hyper_layers * 2]
        ssl = model.ssl_layer_loss(context, center, rows.user, rows.pos_item)
        proto = model.ProtoNCE_loss(center, rows.user, rows.pos_item)
        return _ego_reg(model, rows, neg_item), ssl, proto

    def aux_names(self, model):
        return ("reg", "ssl", "proto")


class SimpleXAdapter(EmbeddingAdapter):
    """SimpleX: the user is its embedding fused with the mean (or attention) of its history items
    (with SimpleX's dropout in training); SimpleX's CCL loss is replaced, its L2 term over the
    user, positive, history and all N negatives (as its own loss takes its negative sequence) kept."""

    def _agg(self, model, user: Tensor):
        user_e = model.user_emb(user)
        hist_e = model.item_emb(model.history_item_id[user])
        return model.get_UI_aggregation(user_e, hist_e, model.history_item_len[user]), user_e, hist_e

    def user_item(self, model, rows):
        agg, user_e, hist_e = self._agg(model, rows.user)
        return model.dropout(agg), model.item_emb.weight, {"user_e": user_e, "hist_e": hist_e}

    def all_reps(self, model):
        return None, model.item_emb.weight

    def user_reps(self, model, user):
        return self._agg(model, user)[0]

    def aux_losses(self, model, out, rows, neg_item):
        reg = model.reg_loss(out.state["user_e"], model.item_emb(rows.pos_item), out.state["hist_e"],
                             model.item_emb(neg_item), require_pow=model.require_pow)
        return (model.reg_weight * reg.sum(),)

    def aux_names(self, model):
        return ("reg",)


class DMFAdapter(EmbeddingAdapter):
    """DMF: user tower over the user's interaction row, item tower over the item's column; the item
    table is the item tower applied to every item (one sparse product). BCE is replaced; DMF has
    no auxiliary term."""

    caches = ("i_embedding",)

    def _item_matrix(self, model) -> Tensor:
        m = getattr(model, "_rl_item_matrix", None)
        if m is None:
            coo = model.interaction_matrix.tocoo()
            idx = torch.as_tensor(np.vstack([coo.col, coo.row]), dtype=torch.long)  # item x user
            m = torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32),
                                        (model.n_items, model.n_users)).coalesce().to(model.device)
            model._rl_item_matrix = m
        return m

    def _items(self, model):
        return model.item_fc_layers(torch.sparse.mm(self._item_matrix(model), model.item_linear.weight.t()))

    def user_reps(self, model, user):
        return _per_user(lambda u: model.user_fc_layers(model.get_user_embedding(u)), user)

    def user_item(self, model, rows):
        return self.user_reps(model, rows.user), self._items(model), {}

    def all_reps(self, model):
        return None, self._items(model)


class FISMAdapter(EmbeddingAdapter):
    """FISM: score = n_u^-alpha * sum_{j in history} src_j . dst_i + b_u + b_i, written exactly as a
    dot product of [agg_u, 1, b_u] and [dst_i, b_i, 1]. BCE is replaced; its L2 term (reg_loss,
    on the whole item tables) is kept."""

    def user_reps(self, model, user):
        def agg(u):
            mask = model.mask_mat[u].unsqueeze(2)
            src = (model.item_src_embedding(model.history_item_matrix[u]) * mask).sum(1)
            coeff = model.history_lens[u].float().clamp(min=1).pow(-model.alpha).unsqueeze(1)
            one = torch.ones_like(coeff)
            return torch.cat([coeff * src, one, model.user_bias[u].unsqueeze(1)], dim=1)

        return _per_user(agg, user)

    def _items(self, model):
        w = model.item_dst_embedding.weight
        return torch.cat([w, model.item_bias.unsqueeze(1), torch.ones_like(w[:, :1])], dim=1)

    def user_item(self, model, rows):
        return self.user_reps(model, rows.user), self._items(model), {}

    def all_reps(self, model):
        return None, self._items(model)

    def sim_table(self, model):
        return model.item_dst_embedding.weight

    def aux_losses(self, model, out, rows, neg_item):
        return (model.reg_loss(),)

    def aux_names(self, model):
        return ("reg",)


class ENMFAdapter(EmbeddingAdapter):
    """ENMF: score = H . (u * i) = (u * H) . i, so the user representation is the (dropped-out)
    user embedding times H. ENMF trains on user batches: the rows are the batch users' positives,
    scored with one [B_u, n_items] product. Its whole-data (non-sampling) loss is replaced; its L2
    term (reg_loss) is kept."""

    user_batches = True
    reduction = "sum"  # ENMF's own loss is summed over the batch

    def user_item(self, model, rows):
        u = model.dropout(model.user_embedding(rows.batch_user)) * model.H_i.weight
        return u, model.item_embedding.weight, {}

    def all_reps(self, model):
        return model.user_embedding.weight * model.H_i.weight, model.item_embedding.weight

    def aux_losses(self, model, out, rows, neg_item):
        return (model.reg_loss(),)

    def aux_names(self, model):
        return ("reg",)


# ======================================================================================== logits
class LogitsAdapter(Adapter):
    """Autoencoders that output logits over all items for a batch of users (RecBole's
    UserDataLoader). The loss takes each row's positive and negative columns of its user's logits;
    no score_fn applies."""

    kind = "logits"
    user_batches = True
    caches = ()
    reduction = "user_sum"  # -(log_softmax(z) * rating_matrix).sum(1).mean()

    def logits(self, model, batch_user: Tensor, **kwargs) -> Tuple[Tensor, Dict[str, Any]]:
        raise NotImplementedError

    def forward(self, model, rows, neg_item, **kwargs):
        scores, state = self.logits(model, rows.batch_user, **kwargs)
        return Forward(scores=scores, state=state)

    def scores(self, model, out, rows, neg_item, score_fn, path, with_item_sim, sim_alpha=None):
        pos, neg = _pick_rows(out.scores, rows, neg_item)
        sim = item_similarity(self.sim_table(model), rows.pos_item, neg_item) if with_item_sim else None
        return pos, neg, mix_affinity(sim, neg, sim_alpha)

    def aux_losses(self, model, out, rows, neg_item):
        return tuple(out.state[name] for name in self.aux_names(model))

    def sim_table(self, model):
        return model.decoder[-1].weight  # the output layer: one row per item


def _anneal(model) -> float:
    model.update += 1
    if model.total_anneal_steps > 0:
        return min(model.anneal_cap, 1.0 * model.update / model.total_anneal_steps)
    return model.anneal_cap


class MultiDAEAdapter(LogitsAdapter):
    """MultiDAE: multinomial log-likelihood replaced; no auxiliary term."""

    def logits(self, model, batch_user, **kwargs):
        return model.forward(model.get_rating_matrix(batch_user)), {}


class MultiVAEAdapter(LogitsAdapter):
    """MultiVAE: multinomial log-likelihood replaced; its annealed KL term kept."""

    def logits(self, model, batch_user, **kwargs):
        anneal = _anneal(model)
        z, mu, logvar = model.forward(model.get_rating_matrix(batch_user))
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)) * anneal
        return z, {"kl": kl}

    def aux_names(self, model):
        return ("kl",)


class MacridVAEAdapter(LogitsAdapter):
    """MacridVAE: multinomial log-likelihood replaced; its annealed KL term (over the kfac facets)
    and, when reg_weights are not zero, its L2 term kept. Its logits are log-probabilities mixed
    over the facets (their own temperature is MacridVAE's `tau`)."""

    def logits(self, model, batch_user, **kwargs):
        anneal = _anneal(model)
        z, mu, logvar = model.forward(model.get_rating_matrix(batch_user))
        kl = sum(-0.5 * torch.mean(torch.sum(1 + lv - lv.exp(), dim=1)) for lv in logvar)
        state = {"kl": kl * anneal}
        if self._has_reg(model):
            state["reg"] = model.reg_loss()
        return z, state

    @staticmethod
    def _has_reg(model):
        return model.regs[0] != 0 or model.regs[1] != 0

    def aux_names(self, model):
        return ("kl", "reg") if self._has_reg(model) else ("kl",)

    def sim_table(self, model):
        return model.item_embedding.weight


class RecVAEAdapter(LogitsAdapter):
    """RecVAE: the log-likelihood part of its ELBO replaced; its KL term against the composite
    prior (beta / gamma-weighted) kept. RecVAETrainer's alternating encoder (with input dropout) and
    decoder passes are kept: calculate_loss takes its encoder_flag."""

    def logits(self, model, batch_user, encoder_flag: bool = True, **kwargs):
        from recbole.model.general_recommender.recvae import log_norm_pdf

        rm = model.get_rating_matrix(batch_user)
        x_pred, mu, logvar, z = model.forward(rm, model.dropout_prob if encoder_flag else 0)
        kl_weight = model.gamma * rm.sum(dim=-1) if model.gamma else model.beta
        kld = (log_norm_pdf(z, mu, logvar) - model.prior(rm, z)).sum(dim=-1).mul(kl_weight).mean()
        return x_pred, {"kl": kld}

    def aux_names(self, model):
        return ("kl",)

    def sim_table(self, model):
        return model.decoder.weight


class RaCTAdapter(MultiVAEAdapter):
    """RaCT: in its actor pre-training stage (the stage trained on a recommendation loss) the
    multinomial log-likelihood is replaced and its annealed KL term kept."""

    def check_config(self, config):
        stage = config["train_stage"]
        if stage != "actor_pretrain":
            raise ConfigError(
                "train_stage", stage, "'actor_pretrain' with rec_loss set",
                hint="RaCT's 'critic_pretrain' and 'finetune' stages train a critic of NDCG and the actor "
                     "against that critic: they have no recommendation term for rec_loss to replace. Train "
                     "the actor with rec_loss (train_stage: actor_pretrain); run the later stages with "
                     "rec_loss unset",
            )

    def logits(self, model, batch_user, **kwargs):
        anneal = _anneal(model)
        z, mu, logvar = model.forward(model.get_rating_matrix(batch_user))
        kl = (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1) * anneal).mean()
        return z, {"kl": kl}


class CDAEAdapter(LogitsAdapter):
    """CDAE: its BCE / MSE reconstruction loss replaced (the training scores are its output
    layer's pre-activation values; evaluation applies its out_activation, which keeps the
    ranking); its L1 + L2 terms on the user and item input weights kept (one part)."""

    reduction = "sum"  # CDAE's own BCE / MSE uses reduction="sum"

    def logits(self, model, batch_user, **kwargs):
        out = model.forward(model.get_rating_matrix(batch_user), batch_user)
        reg = model.reg_weight_1 * (model.h_user.weight.norm(p=1) + model.h_item.weight.norm(p=1))
        reg = reg + model.reg_weight_2 * (model.h_user.weight.norm() + model.h_item.weight.norm())
        return out, {"reg": reg}

    def aux_names(self, model):
        return ("reg",)

    def sim_table(self, model):
        return model.out_layer.weight


# ========================================================================================== pair
class PairAdapter(Adapter):
    """Pair scorers without a factorised form: the B x (1 + N) (user, item) pairs of a batch are
    built once and scored by one call of the model's forward(user, item) (its logits, before any
    sigmoid). Costs (1 + N) times the model's per-pair forward per row."""

    kind = "pair"
    caches = ()

    def forward(self, model, rows, neg_item, **kwargs):
        cols = torch.cat([rows.pos_item.unsqueeze(1), neg_item], dim=1)  # [R, 1 + N]
        users = rows.user.unsqueeze(1).expand_as(cols)
        return Forward(scores=model.forward(users.reshape(-1), cols.reshape(-1)).view(cols.shape))

    def scores(self, model, out, rows, neg_item, score_fn, path, with_item_sim, sim_alpha=None):
        scores = pair_logit_scores(out.scores, model.rec_settings.pair_score_fn)  # score_fn does not apply
        sim = item_similarity(self.sim_table(model), rows.pos_item, neg_item) if with_item_sim else None
        return scores[:, 0], scores[:, 1:], mix_affinity(sim, scores[:, 1:], sim_alpha)

    def sim_table(self, model):
        return model.item_embedding.weight


class RegPairAdapter(PairAdapter):
    """ConvNCF, NAIS: their L2 term on the model's parameters (reg_loss) is kept."""

    def aux_losses(self, model, out, rows, neg_item):
        return (model.reg_loss(),)

    def aux_names(self, model):
        return ("reg",)


class ConvNCFAdapter(RegPairAdapter):
    reduction = "sum"  # ConvNCF's own BPR loss (ConvNCFBPRLoss) is summed over the batch


class NeuMFAdapter(PairAdapter):
    def sim_table(self, model):
        return torch.cat([model.item_mf_embedding.weight, model.item_mlp_embedding.weight], dim=1)


class NAISAdapter(RegPairAdapter):
    def sim_table(self, model):
        return model.item_dst_embedding.weight


# ====================================================================================== registry
_embedding, _propagated_reg = EmbeddingAdapter(), PropagatedRegAdapter()
for _name, _adapter in {
    "BPR": _embedding,
    "LightGCN": LightGCNAdapter(),
    "NGCF": _propagated_reg,
    "SpectralCF": _propagated_reg,
    "DGCF": DGCFAdapter(),
    "SGL": SGLAdapter(),
    "NCL": NCLAdapter(),
    "SimpleX": SimpleXAdapter(),
    "DMF": DMFAdapter(),
    "FISM": FISMAdapter(),
    "ENMF": ENMFAdapter(),
    "MultiVAE": MultiVAEAdapter(),
    "MultiDAE": MultiDAEAdapter(),
    "MacridVAE": MacridVAEAdapter(),
    "RecVAE": RecVAEAdapter(),
    "RaCT": RaCTAdapter(),
    "CDAE": CDAEAdapter(),
    "NeuMF": NeuMFAdapter(),
    "ConvNCF": ConvNCFAdapter(),
    "NAIS": NAISAdapter(),
    "NNCF": PairAdapter(),
}.items():
    ADAPTERS.register(_name)(_adapter)


def supported_models():
    return ADAPTERS.names()


# Models a training-loss swap cannot apply to, with the reason the user is told.
_NOT_GRADIENT = "it is not trained by gradient descent, so there is no training loss to replace"
_DIFFUSION = "it is a diffusion model trained on a denoising objective, not on ranking scores"
REFUSED = {
    **{m: _NOT_GRADIENT for m in
       ("Pop", "ItemKNN", "AsymKNN", "EASE", "SLIMElastic", "ADMMSLIM", "NCEPLRec", "Random")},
    "DiffRec": _DIFFUSION,
    "LDiffRec": _DIFFUSION,
    "LINE": "its objective is a graph-embedding (edge/context) loss, not a user-item ranking loss",
    "GCMC": "it is trained as rating classification over its decoder's classes, not on ranking scores",
}
