"""The recommender side: RecBole's own model classes, with the plugin's loss path.

`get_model("LightGCN")` returns a subclass of RecBole's LightGCN that keeps its name, so every
name-based lookup in RecBole (model YAML defaults, autoencoder dataloaders, <Name>Trainer)
keeps working. With `rec_loss` unset the subclass only carries the compatibility fixes and
trains exactly like the original; with `rec_loss` set, calculate_loss draws [B, N] negatives
on the device, scores them through the model's adapter and applies the chosen loss, and
evaluation scores with the same score function.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import get_model as recbole_get_model

from recbole_dsl.adapters import ADAPTERS
from recbole_dsl.compat import graph_compat
from recbole_dsl.config import RecLossSettings
from recbole_dsl.losses import LOSSES, LossContext
from recbole_dsl.samplers import PositiveSet, build_sampler
from recbole_dsl.scoring import all_item_scores, batch_scores, choose_score_path, pair_scores


class RecLossRecommender(GeneralRecommender):
    """Mixin placed in front of a RecBole general model class (see get_model)."""

    def __init__(self, config, dataset):
        with graph_compat(type(self)):
            super().__init__(config, dataset)
        self.rec_settings: Optional[RecLossSettings] = None
        self._eval_reps = None
        if config["rec_loss"] is None:
            return
        s = self.rec_settings = RecLossSettings.from_config(config)
        self.adapter = ADAPTERS.get(config["model"])
        self.rec_loss_fn = LOSSES.get(s.loss).from_config(config)
        positives = None
        if s.exclude_positives:
            inter = dataset.inter_feat
            positives = PositiveSet(inter[self.USER_ID], inter[self.ITEM_ID], self.n_items, self.n_users)
        self.neg_sampler = build_sampler(s.neg_sampler, self.n_items, s.neg_num, positives).to(self.device)
        self.score_path = choose_score_path(s.score_path, self.n_items, s.neg_num)
        self.last_diagnostics: Dict[str, float] = {}

    # -- training -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        # Any switch between training and evaluation invalidates cached representations
        # (graph models propagate once per evaluation pass, not once per eval batch).
        self._eval_reps = None
        return super().train(mode)

    def calculate_loss(self, interaction):
        if self.rec_settings is None:
            return super().calculate_loss(interaction)
        self._eval_reps = None
        if getattr(self, "restore_user_e", None) is not None or getattr(self, "restore_item_e", None) is not None:
            # The model's own evaluation cache is stale after a step; its own calculate_loss
            # clears it, and we replace that method.
            self.restore_user_e, self.restore_item_e = None, None
        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item, neg_log_q = self.neg_sampler.sample(user, pos_item)
        user_e, item_table = self.adapter.reps(self, user)
        pos, neg, item_sim = batch_scores(
            user_e, item_table, pos_item, neg_item,
            score_fn=self.rec_settings.score_fn, path=self.score_path,
            with_item_sim=getattr(self.rec_loss_fn, "needs_item_sim", False),
        )
        ctx = LossContext(user=user, neg_log_q=neg_log_q, item_sim=item_sim)
        loss = self.rec_loss_fn(pos, neg, ctx)
        aux = self.adapter.aux_losses(self, user, pos_item, neg_item)
        return (loss, *aux) if aux else loss

    # -- evaluation -----------------------------------------------------------------------
    def _all_reps(self):
        if self._eval_reps is None:
            with torch.no_grad():
                self._eval_reps = self.adapter.all_reps(self)
        return self._eval_reps

    def full_sort_predict(self, interaction):
        if self.rec_settings is None:
            return super().full_sort_predict(interaction)
        users, items = self._all_reps()
        user = interaction[self.USER_ID]
        return all_item_scores(users[user], items, self.rec_settings.eval_score_fn).view(-1)

    def predict(self, interaction):
        if self.rec_settings is None:
            return super().predict(interaction)
        users, items = self._all_reps()
        return pair_scores(
            users[interaction[self.USER_ID]], items[interaction[self.ITEM_ID]], self.rec_settings.eval_score_fn
        )


@functools.lru_cache(maxsize=None)
def _plugin_class(base):
    # Same name and qualname as RecBole's class: RecBole looks models up by name.
    return type(base.__name__, (RecLossRecommender, base), {"__module__": __name__, "__qualname__": base.__qualname__})


def get_model(model_name: str):
    """RecBole's get_model, returning the plugin subclass for general recommenders."""
    base = recbole_get_model(model_name)
    if not (isinstance(base, type) and issubclass(base, GeneralRecommender)):
        return base
    return _plugin_class(base)
