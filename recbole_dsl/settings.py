"""The plugin's settings, parsed and checked once per Config into one frozen object.

`PluginSettings.from_config` reads every plugin key of a RecBole Config, checks it (ConfigError
naming the key, the value and what is allowed) and returns plain values. The plugin's Config
does this once and keeps the result as `config.plugin_settings`; the recommender, its adapter,
the sampler, the trainer and the protocols all receive that object (or a part of it) instead of
reading YAML keys themselves. `plugin_settings(config)` also accepts a plain RecBole Config (for
example one unpickled from an older checkpoint) and parses it then.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from recbole_dsl.checks import check_bool, check_choice, check_int
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses import LOSSES, RecLoss
from recbole_dsl.protocols.settings import ProtocolSettings
from recbole_dsl.samplers import SAMPLERS
from recbole_dsl.scoring import PAIR_SCORE_FNS, SCORE_FNS, SCORE_PATHS

BATCH_MODES = ("interaction", "user")

Params = Tuple[Tuple[str, Any], ...]  # constructor keyword arguments, hashable and picklable


@dataclass(frozen=True)
class RecLossSettings:
    """The keys of a run with `rec_loss` set, checked; the loss and sampler parameters are the
    checked constructor arguments of the registered classes."""

    loss: str
    score_fn: str
    eval_score_fn: str
    neg_sampler: str
    neg_num: int
    exclude_positives: bool
    score_path: str
    train_batch_mode: str
    positives_per_user: int
    cpu_malloc_tuning: bool = True
    cpu_flush_denormal: bool = True
    pair_score_fn: str = "tanh"
    loss_params: Params = ()
    sampler_params: Params = ()
    sparse_update: bool = False

    @property
    def loss_kwargs(self) -> Dict[str, Any]:
        return dict(self.loss_params)

    @property
    def sampler_kwargs(self) -> Dict[str, Any]:
        return dict(self.sampler_params)

    def build_loss(self) -> RecLoss:
        """The run's loss module (built by the recommender, once per model)."""
        return LOSSES.get(self.loss)(**self.loss_kwargs)

    @classmethod
    def from_config(cls, cfg, protocols: ProtocolSettings) -> "RecLossSettings":
        loss_cls = LOSSES.get(cfg["rec_loss"])
        score_fn = check_choice("score_fn", cfg["score_fn"], SCORE_FNS)
        eval_score_fn = cfg["eval_score_fn"]
        eval_score_fn = score_fn if eval_score_fn is None else check_choice("eval_score_fn", eval_score_fn, SCORE_FNS)
        # absent from configs pickled into checkpoints written before the key existed
        pair_score_fn = cfg["pair_score_fn"]
        pair_score_fn = "tanh" if pair_score_fn is None else check_choice("pair_score_fn", pair_score_fn, PAIR_SCORE_FNS)
        sampler_cls = SAMPLERS.get(cfg["neg_sampler"])
        neg_num = check_int("neg_num", cfg["neg_num"], 1)
        exclude = check_bool("exclude_positives", cfg["exclude_positives"])
        path = check_choice("score_path", cfg["score_path"], SCORE_PATHS)
        mode = check_choice("train_batch_mode", cfg["train_batch_mode"], BATCH_MODES)
        k = check_int("positives_per_user", cfg["positives_per_user"], 1)
        sampler_kwargs = sampler_cls.check({arg: cfg[key] for arg, key in sampler_cls.params.items()
                                            if cfg[key] is not None})
        if protocols.fn_noise_p > 0 and not sampler_cls.per_row:
            raise ConfigError("neg_sampler", cfg["neg_sampler"],
                              "a per-row sampler (uniform or popularity) when fn_noise_p > 0",
                              hint="false-negative noise replaces negatives row by row; in_batch and shared "
                                   "negatives cannot be")
        if sampler_cls.exhaustive and not loss_cls.supports_all:
            served = [n for n, c in LOSSES.items() if c.supports_all]
            raise ConfigError("rec_loss", cfg["rec_loss"], f"one of {served} with neg_sampler: {cfg['neg_sampler']}",
                              hint="the exact softmax over every item is defined for the softmax-family losses; "
                                   "train the others with a sampled negative sampler")
        loss_kwargs = loss_cls.check(loss_cls.config_kwargs(cfg), neg_num)
        sparse = _switch(cfg, "sparse_update", default=False)
        if sparse:
            _check_sparse_update(cfg)
        return cls(loss_cls.name, score_fn, eval_score_fn, cfg["neg_sampler"], neg_num, exclude, path, mode, k,
                   _switch(cfg, "cpu_malloc_tuning"), _switch(cfg, "cpu_flush_denormal"), pair_score_fn,
                   tuple(loss_kwargs.items()), tuple(sampler_kwargs.items()), sparse)


# Learners whose update can follow row-sparse gradients: adam becomes recbole_dsl.optim.LazyAdam,
# torch's SGD takes sparse gradients as they are.
SPARSE_LEARNERS = ("adam", "sgd")


def _check_sparse_update(cfg) -> None:
    learner = str(cfg["learner"] or "adam").lower()
    if learner not in SPARSE_LEARNERS:
        raise ConfigError("learner", cfg["learner"], f"one of {list(SPARSE_LEARNERS)} with sparse_update: True",
                          hint="sparse_update updates only the embedding rows a batch touched; RecBole's other "
                               "learners need dense gradients")
    if cfg["clip_grad_norm"]:
        raise ConfigError("clip_grad_norm", cfg["clip_grad_norm"], "unset (None) with sparse_update: True",
                          hint="clipping by the global norm reads every gradient densely")
    if (cfg["nproc"] or 1) > 1 or (cfg["world_size"] or 1) > 1:
        raise ConfigError("sparse_update", True, "False in distributed runs (nproc / world_size > 1)",
                          hint="DistributedDataParallel averages dense gradients")


def _switch(cfg, key: str, default: bool = True) -> bool:
    """A True/False key that reads as `default` when absent (configs pickled into checkpoints written
    before the key existed)."""
    value = cfg[key]
    return default if value is None else check_bool(key, value)


@dataclass(frozen=True)
class PluginSettings:
    """Everything the plugin reads from a Config: the protocol keys (checked with or without
    rec_loss) and, when rec_loss is set, the loss path's keys."""

    protocols: ProtocolSettings
    rec: Optional[RecLossSettings] = None
    trust_checkpoint: bool = False
    strict_keys: bool = False

    @classmethod
    def from_config(cls, cfg) -> "PluginSettings":
        protocols = ProtocolSettings.from_config(cfg)
        if protocols.fn_noise_p > 0 and cfg["rec_loss"] is None:
            raise ConfigError("fn_noise_p", protocols.fn_noise_p, "0 when rec_loss is unset",
                              hint="false negatives are drawn by the plugin's negative sampler, which runs with "
                                   "rec_loss set")
        rec = None if cfg["rec_loss"] is None else RecLossSettings.from_config(cfg, protocols)
        # absent (False) in configs pickled into checkpoints written before the keys existed
        trust = _switch(cfg, "trust_checkpoint", default=False)
        strict = _switch(cfg, "strict_keys", default=False)
        return cls(protocols, rec, trust, strict)


def plugin_settings(config) -> PluginSettings:
    """The settings the plugin's Config parsed, or (a plain RecBole Config) parsed now."""
    settings = getattr(config, "plugin_settings", None)
    return settings if isinstance(settings, PluginSettings) else PluginSettings.from_config(config)
