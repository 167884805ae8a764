"""Build the negative sampler of a run from its checked settings and training dataset (the samplers
themselves take plain arguments)."""
from __future__ import annotations

import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings
from recbole_dsl.samplers.base import SAMPLERS, PositiveSet, build_sampler
from recbole_dsl.samplers.noisy import FalseNegativeSampler


def sampler_for_run(settings, protocols: ProtocolSettings, dataset, n_items: int, n_users: int):
    """The run's sampler: ``settings.neg_sampler`` with its checked parameters, the training
    positives to exclude (``exclude_positives``), training-split item counts where the sampler
    needs them, and the false-negative noise wrapper when ``fn_noise_p`` > 0.

    ``settings``: the run's RecLossSettings; ``dataset``: the training split the recommender is
    built with (RecBole passes it to the model's constructor)."""
    cls = SAMPLERS.get(settings.neg_sampler)
    noise = getattr(dataset, NOISE_ATTR, None)
    if protocols.changes_training_data and noise is None:
        keys = [k for k in ("fn_pool_ratio", "fp_noise_ratio") if getattr(protocols, k) > 0]
        raise ConfigError(
            keys[0], getattr(protocols, keys[0]), "0 unless the data were prepared by recbole_dsl",
            hint="The noise protocols are applied to the training split by recbole_dsl's data_preparation "
                 "(run_recbole_dsl and the tuner use it); in your own script use "
                 "`from recbole_dsl.protocols import data_preparation` instead of RecBole's",
        )
    positives = _positives(settings, dataset, n_items, n_users)
    items = dataset.inter_feat[dataset.iid_field]
    counts = torch.bincount(items.long(), minlength=n_items) if cls.needs_item_counts else None
    sampler = build_sampler(settings.neg_sampler, n_items, settings.neg_num, positives, item_counts=counts,
                            **settings.sampler_kwargs)
    if protocols.fn_noise_p > 0:
        sampler = FalseNegativeSampler(sampler, noise.fn_pool_user, noise.fn_pool_item, n_users, protocols.fn_noise_p)
    return sampler


def _positives(settings, dataset, n_items: int, n_users: int):
    if not settings.exclude_positives:
        return None
    inter = dataset.inter_feat
    return PositiveSet(inter[dataset.uid_field], inter[dataset.iid_field], n_items, n_users)


def catalogue_for_run(settings, dataset, n_items: int, n_users: int, sampler=None):
    """The `all` sampler over the run's training positives: its batches' ``excluded`` pairs leave
    each row's positives out of a scan of the whole catalogue (a loss's catalogue slate,
    ScoreNeeds.catalogue_slate), whatever sampler draws the run's negatives. The run's
    ``sampler`` lends its positive table when it has one (built once per run, not twice)."""
    positives = getattr(sampler, "positives", None) if settings.exclude_positives else None
    if positives is None:
        positives = _positives(settings, dataset, n_items, n_users)
    return build_sampler("all", n_items, 1, positives, block=settings.sampler_kwargs.get("block", 4096))
