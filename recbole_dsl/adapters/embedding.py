"""Embedding adapters: models whose score is a product of a user and an item representation.

The adapter returns the batch users' representations and the whole item table; the score path
(recbole_dsl.scoring) applies ``score_fn`` and picks the positive and negative columns (one matrix
product against all items, or a gather of the N negatives, chosen from the sizes). Full-sort
evaluation uses the same score function (``eval_score_fn``) on the same representations.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_dsl.adapters.base import ADAPTERS, Adapter, Forward, Rows, pick_rows
from recbole_dsl.losses.full import AllItems, row_topk_all
from recbole_dsl.scoring import FULL_BLOCK_CELLS, all_item_scores, batch_scores, choose_score_path, prepare


def per_user(fn, user: Tensor) -> Tensor:
    """fn(unique users)[row]: history-based user representations are computed once per distinct
    user of the batch, not once per row."""
    uniq, inv = torch.unique(user, return_inverse=True)
    return fn(uniq)[inv]


@ADAPTERS.register("BPR")
class EmbeddingAdapter(Adapter):
    """Models whose score is user_rep . item_rep with a lookup table per side (BPR, i.e. MF)."""

    evaluates_with_plugin_scores = True
    supports_all_items = True
    supports_sparse_update = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass builds its representations its own way (histories, propagation, towers): it
        # serves sparse_update only where it says so itself.
        if "supports_sparse_update" not in cls.__dict__:
            cls.supports_sparse_update = False

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        self._eval_reps: Optional[Tuple[Optional[Tensor], Tensor]] = None
        # sparse_update: the tables' lookups (the batch users, the model's regulariser) give
        # row-sparse gradients; the item table's rows are looked up sparsely by the score path.
        self.sparse = bool(settings.sparse_update) and type(self).supports_sparse_update
        if self.sparse:
            model.user_embedding.sparse = True
            model.item_embedding.sparse = True

    def choose_score_path(self) -> str:
        if self.user_batches:  # one [B_u, n_items] product per batch
            return "full"
        return choose_score_path(self.settings.score_path, self.model.n_items, self.settings.neg_num)

    # -- representations (what a subclass overrides) --------------------------------------
    def user_item(self, rows: Rows) -> Tuple[Tensor, Tensor, Dict[str, Any]]:
        """Training representations: (users of the rows [R, d] (or of batch_user [B_u, d] for
        user-level batches), item table [n_items, d], state for the auxiliary terms)."""
        m = self.model
        return m.user_embedding(rows.user), m.item_embedding.weight, {}

    def all_reps(self) -> Tuple[Optional[Tensor], Tensor]:
        """Evaluation representations: (every user's [n_users, d], or None when users are computed
        per batch with user_reps, every item's [n_items, d])."""
        return self.model.user_embedding.weight, self.model.item_embedding.weight

    def user_reps(self, user: Tensor) -> Tensor:
        """Evaluation user representations [B, d] when all_reps gives no user table."""
        raise NotImplementedError

    def sim_table(self) -> Tensor:
        return self.all_reps()[1]

    # -- training -------------------------------------------------------------------------
    def forward(self, rows, neg_item, **kwargs):
        user_e, items, state = self.user_item(rows)
        return Forward(user_e=user_e, items=items, state=state)

    def scores(self, out, rows, neg_item, needs):
        score_fn = self.settings.score_fn
        if rows.row_of is None:
            return batch_scores(out.user_e, out.items, rows.pos_item, neg_item, score_fn, self.score_path,
                                needs.affinity_alpha, sparse=self.sparse)
        # User-level batches: one [B_u, n_items] product, then each row's columns.
        pos, neg = pick_rows(all_item_scores(out.user_e, out.items, score_fn), rows, neg_item)
        return self.with_affinity(pos, neg, rows, neg_item, needs, table=out.items)

    def all_items_loss(self, out, rows, negs, loss_fn):
        score_fn = self.settings.score_fn
        u = prepare(out.user_e, score_fn)
        if rows.row_of is not None:  # user-level batches: one query per row
            u = u[rows.row_of]
        items = prepare(out.items, score_fn)
        pos = (u * items[rows.pos_item]).sum(-1)
        sim_table = None
        if loss_fn.needs.affinity_alpha is not None:  # as batch_scores: the training table, normalised
            sim_table = items.detach() if score_fn == "cosine" else F.normalize(out.items.detach(), dim=-1)
        all_items = AllItems.build(negs.excluded, int(pos.shape[0]), int(items.shape[0]), negs.block,
                                   group=rows.groups, pos_item=rows.pos_item, sim_table=sim_table)
        return loss_fn.forward_all(u, items, pos, all_items)

    @torch.no_grad()
    def catalogue_top(self, out, rows, negs, k):
        score_fn = self.settings.score_fn
        u = prepare(out.user_e.detach(), score_fn)
        if rows.row_of is not None:
            u = u[rows.row_of]
        # Nothing is kept per block (no gradient), so the scan may take blocks up to the full score
        # path's cap rather than all_block_size's: fewer top-k merges (BENCHMARKS.md, "The catalogue scan").
        block = max(int(negs.block), FULL_BLOCK_CELLS // max(1, int(u.shape[0])))
        return row_topk_all(u, prepare(out.items.detach(), score_fn), int(k), excluded=negs.excluded, block=block)

    # -- evaluation -----------------------------------------------------------------------
    def invalidate(self) -> None:
        self._eval_reps = None

    def _eval_user_item(self, user: Tensor) -> Tuple[Tensor, Tensor]:
        """(batch users' representations, every item's representation through eval_score_fn).

        Cached until the next training step or train/eval switch: graph models propagate once per
        evaluation pass, not once per evaluation batch, and the item table is normalised once
        (RecBole packs one user per full-sort batch on catalogues above eval_batch_size items:
        Gowalla's validation is then 29,858 batches)."""
        if self._eval_reps is None:
            with torch.no_grad():
                users, items = self.all_reps()
                self._eval_reps = (users, prepare(items, self.settings.eval_score_fn))
        users, items = self._eval_reps
        user_e = users[user] if users is not None else self.user_reps(user)
        return prepare(user_e, self.settings.eval_score_fn), items

    def full_sort_scores(self, user: Tensor) -> Tensor:
        """[B, n_items] evaluation scores of the batch users."""
        user_e, items = self._eval_user_item(user)
        return user_e @ items.t()

    def pair_scores(self, user: Tensor, item: Tensor) -> Tensor:
        """[B] evaluation scores of aligned (user, item) pairs (RecBole's sampled evaluation)."""
        user_e, items = self._eval_user_item(user)
        return (user_e * items[item]).sum(-1)


@ADAPTERS.register("SimpleX")
class SimpleXAdapter(EmbeddingAdapter):
    """SimpleX: the user is its embedding fused with the mean (or attention) of its history items
    (with SimpleX's dropout in training); SimpleX's CCL loss is replaced, its L2 term over the
    user, positive, history and all N negatives (as its own loss takes its negative sequence) kept."""

    def _agg(self, user: Tensor):
        m = self.model
        user_e = m.user_emb(user)
        hist_e = m.item_emb(m.history_item_id[user])
        return m.get_UI_aggregation(user_e, hist_e, m.history_item_len[user]), user_e, hist_e

    def user_item(self, rows):
        agg, user_e, hist_e = self._agg(rows.user)
        return self.model.dropout(agg), self.model.item_emb.weight, {"user_e": user_e, "hist_e": hist_e}

    def all_reps(self):
        return None, self.model.item_emb.weight

    def user_reps(self, user):
        return self._agg(user)[0]

    def aux_losses(self, out, rows, neg_item):
        m = self.model
        reg = m.reg_loss(out.state["user_e"], m.item_emb(rows.pos_item), out.state["hist_e"],
                         m.item_emb(neg_item), require_pow=m.require_pow)
        return {"reg": m.reg_weight * reg.sum()}


@ADAPTERS.register("DMF")
class DMFAdapter(EmbeddingAdapter):
    """DMF: user tower over the user's interaction row, item tower over the item's column; the item
    table is the item tower applied to every item (one sparse product). BCE is replaced; DMF has
    no auxiliary term."""

    caches = ("i_embedding",)

    def __init__(self, model, dataset, settings):
        super().__init__(model, dataset, settings)
        coo = model.interaction_matrix.tocoo()
        idx = torch.as_tensor(np.vstack([coo.col, coo.row]), dtype=torch.long)  # item x user
        self._item_matrix = torch.sparse_coo_tensor(
            idx, torch.as_tensor(coo.data, dtype=torch.float32), (model.n_items, model.n_users)
        ).coalesce().to(model.device)

    def _items(self):
        m = self.model
        return m.item_fc_layers(torch.sparse.mm(self._item_matrix, m.item_linear.weight.t()))

    def user_reps(self, user):
        m = self.model
        return per_user(lambda u: m.user_fc_layers(m.get_user_embedding(u)), user)

    def user_item(self, rows):
        return self.user_reps(rows.user), self._items(), {}

    def all_reps(self):
        return None, self._items()


@ADAPTERS.register("FISM")
class FISMAdapter(EmbeddingAdapter):
    """FISM: score = n_u^-alpha * sum_{j in history} src_j . dst_i + b_u + b_i, written exactly as a
    dot product of [agg_u, 1, b_u] and [dst_i, b_i, 1]. BCE is replaced; its L2 term (reg_loss,
    on the whole item tables) is kept."""

    def user_reps(self, user):
        m = self.model

        def agg(u):
            mask = m.mask_mat[u].unsqueeze(2)
            src = (m.item_src_embedding(m.history_item_matrix[u]) * mask).sum(1)
            coeff = m.history_lens[u].float().clamp(min=1).pow(-m.alpha).unsqueeze(1)
            one = torch.ones_like(coeff)
            return torch.cat([coeff * src, one, m.user_bias[u].unsqueeze(1)], dim=1)

        return per_user(agg, user)

    def _items(self):
        w = self.model.item_dst_embedding.weight
        return torch.cat([w, self.model.item_bias.unsqueeze(1), torch.ones_like(w[:, :1])], dim=1)

    def user_item(self, rows):
        return self.user_reps(rows.user), self._items(), {}

    def all_reps(self):
        return None, self._items()

    def sim_table(self):
        return self.model.item_dst_embedding.weight

    def aux_losses(self, out, rows, neg_item):
        return {"reg": self.model.reg_loss()}


@ADAPTERS.register("ENMF")
class ENMFAdapter(EmbeddingAdapter):
    """ENMF: score = H . (u * i) = (u * H) . i, so the user representation is the (dropped-out)
    user embedding times H. ENMF trains on user batches: the rows are the batch users' positives,
    scored with one [B_u, n_items] product. Its whole-data (non-sampling) loss is replaced; its L2
    term (reg_loss) is kept."""

    user_batches = True
    reduction = "sum"  # ENMF's own loss is summed over the batch

    def user_item(self, rows):
        m = self.model
        u = m.dropout(m.user_embedding(rows.batch_user)) * m.H_i.weight
        return u, m.item_embedding.weight, {}

    def all_reps(self):
        m = self.model
        return m.user_embedding.weight * m.H_i.weight, m.item_embedding.weight

    def aux_losses(self, out, rows, neg_item):
        return {"reg": self.model.reg_loss()}
