"""Score adapters: how the plugin gets user and item representations out of a RecBole model.

One adapter per kind of model, chosen through the ADAPTERS registry keyed by the RecBole model
name. An adapter returns, in one forward pass per batch, the batch users' representations
[B, d] and the whole item table [n_items, d]; the scoring path (scoring.py) does the rest.
It also returns the model's own auxiliary terms (e.g. LightGCN's L2 term), which stay at the
scale the model's own calculate_loss gives them; only the recommendation term is replaced.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from recbole_dsl.registry import Registry

ADAPTERS: Registry = Registry("model")


class EmbeddingAdapter:
    """Models whose score is user_rep . item_rep with a lookup table per side (MF)."""

    def reps(self, model, user: Tensor) -> Tuple[Tensor, Tensor]:
        return model.get_user_embedding(user), model.item_embedding.weight

    def all_reps(self, model) -> Tuple[Tensor, Tensor]:
        """Every user's and item's representation, for evaluation (cached by the recommender)."""
        return model.user_embedding.weight, model.item_embedding.weight

    def aux_losses(self, model, user: Tensor, pos_item: Tensor, neg_item: Tensor) -> Tuple[Tensor, ...]:
        return ()


class PropagationAdapter(EmbeddingAdapter):
    """Graph models whose forward() propagates the whole graph and returns (users, items)."""

    def reps(self, model, user):
        user_all, item_all = model.forward()
        return user_all[user], item_all

    def all_reps(self, model):
        return model.forward()


class LightGCNAdapter(PropagationAdapter):
    def aux_losses(self, model, user, pos_item, neg_item):
        # LightGCN's own L2 term on the ego embeddings of (user, pos, one neg); we keep the
        # same scale by taking the first of the N negatives as "the" negative.
        reg = model.reg_loss(
            model.user_embedding(user),
            model.item_embedding(pos_item),
            model.item_embedding(neg_item[:, 0]),
            require_pow=model.require_pow,
        )
        return (model.reg_weight * reg,)


ADAPTERS.register("BPR")(EmbeddingAdapter())
ADAPTERS.register("LightGCN")(LightGCNAdapter())


def supported_models():
    return ADAPTERS.names()


# Models a training-loss swap cannot apply to, with the reason the user is told.
_NOT_GRADIENT = "it is not trained by gradient descent, so there is no training loss to replace"
REFUSED = {
    **{m: _NOT_GRADIENT for m in ("Pop", "ItemKNN", "EASE", "SLIMElastic", "ADMMSLIM", "NCEPLRec", "Random")},
    "DiffRec": "it is a diffusion model trained on a denoising objective, not on ranking scores",
    "LDiffRec": "it is a diffusion model trained on a denoising objective, not on ranking scores",
    "LINE": "its objective is a graph-embedding (edge/context) loss, not a user-item ranking loss",
    "GCMC": "it is trained as rating classification over its decoder's classes, not on ranking scores",
}
