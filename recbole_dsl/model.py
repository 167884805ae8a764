"""The recommender side: RecBole's own model classes, with the plugin's loss path.

`get_model("LightGCN")` returns a subclass of RecBole's LightGCN that keeps its name, so every
name-based lookup in RecBole (model YAML defaults, autoencoder dataloaders, <Name>Trainer)
keeps working. With `rec_loss` unset the subclass only carries the compatibility fixes and
trains exactly like the original; with `rec_loss` set, calculate_loss takes the batch's
(user, positive) rows, draws [B, N] negatives on the device, scores them with one forward pass
of the model through its adapter (adapters.py: embedding, logits or pair kind), applies the
chosen loss and adds the model's own auxiliary terms. Evaluation of embedding models scores
with the same score function; autoencoders and pair scorers evaluate with their own scores.
"""
from __future__ import annotations

import functools
from logging import getLogger
from typing import Dict, Optional

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import get_model as recbole_get_model

from recbole_dsl.adapters import ADAPTERS
from recbole_dsl.compat import graph_compat
from recbole_dsl.config import RecLossSettings
from recbole_dsl.losses import LOSSES, LossContext
from recbole_dsl.samplers import sampler_from_config
from recbole_dsl.scoring import all_item_scores, choose_score_path, pair_scores
from recbole_dsl.workspace import clear_workspaces


class RecLossRecommender(GeneralRecommender):
    """Mixin placed in front of a RecBole general model class (see get_model)."""

    def __init__(self, config, dataset):
        if config["rec_loss"] is not None:
            # Settings of the model the loss swap cannot apply to fail before it is built.
            ADAPTERS.get(config["model"]).check_config(config)
        with graph_compat(type(self)):
            super().__init__(config, dataset)
        self.rec_settings: Optional[RecLossSettings] = None
        self._eval_reps = None
        if config["rec_loss"] is None:
            return
        s = self.rec_settings = RecLossSettings.from_config(config)
        self.adapter = ADAPTERS.get(config["model"])
        self.adapter.setup(self, dataset, s)
        self.rec_loss_fn = LOSSES.get(s.loss).from_config(config)
        # neg_sampler with its keys, training positives to exclude, training-split item counts,
        # and the false-negative noise protocol (recbole_dsl/samplers/factory.py)
        self.neg_sampler = sampler_from_config(config, dataset, self.n_items, self.n_users).to(self.device)
        # Embedding models choose their score path; pair scorers only ever score the 1 + N
        # columns of a row (gather); autoencoders (and user-level batches) output whole rows (full).
        if self.adapter.kind == "pair":
            self.score_path = "gather"
        elif self.adapter.kind == "logits" or self.adapter.user_batches:
            self.score_path = "full"
        else:
            self.score_path = choose_score_path(s.score_path, self.n_items, s.neg_num)
        if self.adapter.kind == "logits":
            getLogger().info(f"{config['model']}: the loss takes the model's own logits; score_fn={s.score_fn!r} "
                             f"does not apply, evaluation is the model's own")
        elif self.adapter.kind == "pair":
            getLogger().info(f"{config['model']}: the loss takes the model's pair logits through "
                             f"pair_score_fn={s.pair_score_fn!r}; score_fn={s.score_fn!r} does not apply, "
                             f"evaluation is the model's own")
        self.last_diagnostics: Dict[str, float] = {}

    # -- training -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        # Any switch between training and evaluation invalidates cached representations
        # (graph models propagate once per evaluation pass, not once per eval batch).
        self._eval_reps = None
        if not mode:  # the score path's [B, n_items] buffers are not needed while evaluating
            clear_workspaces()
        return super().train(mode)

    def calculate_loss(self, interaction, **kwargs):
        # kwargs: what a RecBole trainer passes on (RecVAETrainer's encoder_flag).
        if self.rec_settings is None:
            return super().calculate_loss(interaction, **kwargs)
        self._eval_reps = None
        # The model's own evaluation caches (restore_user_e, ...) are stale after a step; its own
        # calculate_loss clears them, and we replace that method.
        self.adapter.clear_caches(self)
        rows = self.adapter.rows(self, interaction)  # (user, positive) rows; user batches expand here
        user, pos_item = rows.user, rows.pos_item
        negs = self.neg_sampler.sample(user, pos_item)
        neg_item, neg_log_q = negs.items, negs.log_q
        out = self.adapter.forward(self, rows, neg_item, **kwargs)  # one forward pass of the model
        sim_alpha = getattr(self.rec_loss_fn, "affinity_alpha", None)
        pos, neg, item_sim = self.adapter.scores(
            self, out, rows, neg_item, self.rec_settings.score_fn, self.score_path,
            getattr(self.rec_loss_fn, "needs_item_sim", False), sim_alpha,
        )
        group = user if rows.group is None else rows.group  # BSL's positive groups
        ctx = LossContext(user=group, neg_log_q=neg_log_q, neg_mask=negs.mask)
        if sim_alpha is None:
            ctx.item_sim = item_sim
        else:  # the adapter mixed it already (one product for cosine scores)
            ctx.neg_affinity = item_sim
        loss = self.rec_loss_fn(pos, neg, ctx)
        scale = self.adapter.rec_scale(self, rows)  # the model's own reduction (mean, sum, per user)
        if scale != 1.0:
            loss = loss * scale
        aux = self.adapter.aux_losses(self, out, rows, neg_item)
        return (loss, *aux) if aux else loss

    # -- evaluation -----------------------------------------------------------------------
    # Embedding models score with the plugin's score function; autoencoders and pair scorers
    # keep the model's own full_sort_predict / predict (their scores are the model's outputs).
    def _all_reps(self):
        if self._eval_reps is None:
            with torch.no_grad():
                self._eval_reps = self.adapter.all_reps(self)
        return self._eval_reps

    def _eval_user_item(self, user):
        users, items = self._all_reps()
        return (users[user] if users is not None else self.adapter.user_reps(self, user)), items

    def full_sort_predict(self, interaction):
        if self.rec_settings is None or self.adapter.kind != "embedding":
            return super().full_sort_predict(interaction)
        user_e, items = self._eval_user_item(interaction[self.USER_ID])
        return all_item_scores(user_e, items, self.rec_settings.eval_score_fn).view(-1)

    def predict(self, interaction):
        if self.rec_settings is None or self.adapter.kind != "embedding":
            return super().predict(interaction)
        user_e, items = self._eval_user_item(interaction[self.USER_ID])
        return pair_scores(user_e, items[interaction[self.ITEM_ID]], self.rec_settings.eval_score_fn)


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
