"""Build the negative sampler of a run from its Config and training dataset (the one edge that
reads YAML keys for samplers; the samplers themselves take plain arguments)."""
from __future__ import annotations

import torch

from recbole_dsl.errors import ConfigError
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings
from recbole_dsl.samplers.base import SAMPLERS, PositiveSet, build_sampler
from recbole_dsl.samplers.noisy import FalseNegativeSampler


def check_sampler_keys(cfg) -> None:
    """Validate the sampler's own keys (e.g. neg_pop_alpha) and its fit with the protocols, before
    anything is built. Raises ConfigError."""
    name = cfg["neg_sampler"]
    cls = SAMPLERS.get(name)
    for arg, key in _all_params().items():
        _check_param(key, cfg[key])
    protocols = ProtocolSettings.from_config(cfg)
    if protocols.fn_noise_p > 0 and not cls.per_row:
        raise ConfigError("neg_sampler", name, "a per-row sampler (uniform or popularity) when fn_noise_p > 0",
                          hint="false-negative noise replaces negatives row by row; in_batch and shared negatives cannot be")


def _all_params():
    out = {}
    for _, cls in SAMPLERS.items():
        out.update(cls.params)
    return out


def _check_param(key, value):
    if key == "neg_pop_alpha" and value is not None:
        from recbole_dsl.samplers.popularity import check_alpha

        check_alpha(value)


def sampler_from_config(config, dataset, n_items: int, n_users: int):
    """The run's sampler: `neg_sampler` with its keys, the training positives to exclude
    (`exclude_positives`), training-split item counts where the sampler needs them, and the
    false-negative noise wrapper when `fn_noise_p` > 0. `dataset` is the training split the
    recommender is built with (RecBole passes it to the model's constructor)."""
    name = config["neg_sampler"]
    cls = SAMPLERS.get(name)
    check_sampler_keys(config)
    protocols = ProtocolSettings.from_config(config)
    noise = getattr(dataset, NOISE_ATTR, None)
    if protocols.changes_training_data and noise is None:
        keys = [k for k in ("fn_pool_ratio", "fp_noise_ratio") if getattr(protocols, k) > 0]
        raise ConfigError(
            keys[0], getattr(protocols, keys[0]), "0 unless the data were prepared by recbole_dsl",
            hint="The noise protocols are applied to the training split by recbole_dsl's data_preparation "
                 "(run_recbole_dsl and the tuner use it); in your own script use "
                 "`from recbole_dsl.protocols import data_preparation` instead of RecBole's",
        )
    inter = dataset.inter_feat
    users, items = inter[dataset.uid_field], inter[dataset.iid_field]
    positives = PositiveSet(users, items, n_items, n_users) if config["exclude_positives"] else None
    counts = torch.bincount(items.long(), minlength=n_items) if cls.needs_item_counts else None
    kwargs = {arg: config[key] for arg, key in cls.params.items() if config[key] is not None}
    sampler = build_sampler(name, n_items, config["neg_num"], positives, item_counts=counts, **kwargs)
    if protocols.fn_noise_p > 0:
        sampler = FalseNegativeSampler(sampler, noise.fn_pool_user, noise.fn_pool_item, n_users, protocols.fn_noise_p)
    return sampler
