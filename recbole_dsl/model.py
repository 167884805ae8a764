"""The recommender side: RecBole's own model classes, with the plugin's loss path.

`get_model("LightGCN")` returns a subclass of RecBole's LightGCN that keeps its name, so every
name-based lookup in RecBole (model YAML defaults, autoencoder dataloaders, <Name>Trainer)
keeps working. With `rec_loss` unset the subclass only carries the compatibility fixes and
trains exactly like the original. With `rec_loss` set, the model gets one adapter instance
(recbole_dsl/adapters), one loss and one negative sampler, all built once from the run's settings;
a training step takes the batch's (user, positive) rows, draws [B, N] negatives on the device,
scores them with one forward pass of the model through its adapter, applies the loss and adds the
model's own auxiliary terms.
"""
from __future__ import annotations

import functools
from typing import Dict

from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import get_model as recbole_get_model

from recbole_dsl.adapters import ADAPTERS
from recbole_dsl.compat import graph_compat, keep_anomaly_mode
from recbole_dsl.losses import LossContext
from recbole_dsl.samplers import SAMPLERS, catalogue_for_run, sampler_for_run
from recbole_dsl.settings import plugin_settings
from recbole_dsl.workspace import clear_workspaces


class RecLossRecommender(GeneralRecommender):
    """Mixin placed in front of a RecBole general model class (see get_model)."""

    # None while rec_loss is unset (the model trains with its own loss). The loss module is an
    # instance attribute only: a class attribute would hide the registered submodule.
    rec_settings = None
    rec_adapter = None
    neg_sampler = None
    catalogue = None

    def __init__(self, config, dataset):
        settings = plugin_settings(config)
        rec = settings.rec
        if rec is not None:
            # Settings of the model the loss swap cannot apply to fail before it is built (again
            # here for Configs that did not come through the plugin's Config).
            ADAPTERS.get(config["model"]).check_run(config, rec)
        with graph_compat(type(self)):
            super().__init__(config, dataset)
        self.last_diagnostics: Dict[str, float] = {}
        self.rec_loss_fn = None
        if rec is None:
            return
        self.rec_settings = rec
        self.rec_adapter = ADAPTERS.get(config["model"])(self, dataset, rec)
        self.rec_loss_fn = rec.build_loss()
        self.neg_sampler = sampler_for_run(rec, settings.protocols, dataset, self.n_items, self.n_users).to(self.device)
        if self.rec_loss_fn.needs.catalogue_slate is not None and not SAMPLERS.get(rec.neg_sampler).exhaustive:
            # the loss's slate is scanned from the whole catalogue, positives left out
            self.catalogue = catalogue_for_run(rec, dataset, self.n_items, self.n_users,
                                               self.neg_sampler).to(self.device)

    # -- training -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        # Any switch between training and evaluation invalidates cached representations.
        if self.rec_adapter is not None:
            self.rec_adapter.invalidate()
        if not mode:  # the score path's [B, n_items] buffers are not needed while evaluating
            clear_workspaces()
        return super().train(mode)

    def calculate_loss(self, interaction, **kwargs):
        # kwargs: what a RecBole trainer passes on (RecVAETrainer's encoder_flag).
        adapter, loss_fn = self.rec_adapter, self.rec_loss_fn
        if adapter is None:
            return super().calculate_loss(interaction, **kwargs)
        adapter.clear_caches()
        rows = adapter.rows(interaction)  # (user, positive) rows; user batches expand here
        negs = self.neg_sampler.sample(rows.user, rows.pos_item)
        out = adapter.forward(rows, negs.items, **kwargs)  # one forward pass of the model
        if negs.excluded is not None:  # `all`: the exact softmax over every other item, in blocks
            loss = adapter.all_items_loss(out, rows, negs, loss_fn)
        else:
            scores = adapter.scores(out, rows, negs.items, loss_fn.needs)
            slate = None
            if self.catalogue is not None:
                slate = adapter.catalogue_top(out, rows, self.catalogue.sample(rows.user, rows.pos_item),
                                              loss_fn.needs.catalogue_slate)
            ctx = LossContext(user=rows.groups, neg_log_q=negs.log_q, neg_mask=negs.mask,
                              neg_affinity=scores.affinity, n_items=self.n_items - 1, slate=slate)
            loss = loss_fn(scores.pos, scores.neg, ctx)
        scale = adapter.rec_scale(rows)  # the model's own reduction (mean, sum, per user)
        if scale != 1.0:
            loss = loss * scale
        aux = adapter.aux_losses(out, rows, negs.items)
        return (loss, *aux.values()) if aux else loss

    # -- evaluation -----------------------------------------------------------------------
    # Embedding models score with the plugin's score function; autoencoders and pair scorers
    # keep the model's own full_sort_predict / predict (their scores are the model's outputs).
    def full_sort_predict(self, interaction):
        adapter = self.rec_adapter
        if adapter is None or not adapter.evaluates_with_plugin_scores:
            return super().full_sort_predict(interaction)
        return adapter.full_sort_scores(interaction[self.USER_ID]).view(-1)

    def predict(self, interaction):
        adapter = self.rec_adapter
        if adapter is None or not adapter.evaluates_with_plugin_scores:
            return super().predict(interaction)
        return adapter.pair_scores(interaction[self.USER_ID], interaction[self.ITEM_ID])


@functools.lru_cache(maxsize=None)
def _plugin_class(base):
    # Same name and qualname as RecBole's class: RecBole looks models up by name.
    return type(base.__name__, (RecLossRecommender, base), {"__module__": __name__, "__qualname__": base.__qualname__})


def get_model(model_name: str):
    """RecBole's get_model, returning the plugin subclass for general recommenders."""
    with keep_anomaly_mode():
        base = recbole_get_model(model_name)
    if not (isinstance(base, type) and issubclass(base, GeneralRecommender)):
        return base
    return _plugin_class(base)
