"""The protocol keys, read and checked once (no RecBole import: samplers and Config use this)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from recbole_dsl.checks import check_choice, check_int, check_real
from recbole_dsl.errors import ConfigError

GROUP_BY = ("items", "interactions")
GROUP_MODES = ("within", "contribution")


def _fraction(key: str, value, closed: bool) -> float:
    """A number in [0, 1) (closed=False) or [0, 1] (closed=True)."""
    return check_real(key, value, "a number in [0, 1]" if closed else "a number in [0, 1)",
                      lambda v: 0 <= v and (v <= 1 if closed else v < 1))


def _get(cfg, key, default):
    value = cfg[key]
    return default if value is None else value


@dataclass(frozen=True)
class ProtocolSettings:
    """Robustness and fairness protocol keys (properties/overall.yaml documents them)."""

    fn_pool_ratio: float = 0.0  # share of training interactions held out as the false-negative pool
    fn_noise_p: float = 0.0  # probability that a negative is drawn from the user's pool
    fp_noise_ratio: float = 0.0  # false positives added per user, as a share of its training count
    noise_seed: Optional[int] = None  # None: the config's seed
    pop_groups: int = 10
    pop_group_by: str = "items"
    pop_group_mode: str = "within"

    @property
    def changes_training_data(self) -> bool:
        return self.fn_pool_ratio > 0 or self.fp_noise_ratio > 0

    @classmethod
    def from_config(cls, cfg) -> "ProtocolSettings":
        fn_pool = _fraction("fn_pool_ratio", _get(cfg, "fn_pool_ratio", 0.0), closed=False)
        p = _fraction("fn_noise_p", _get(cfg, "fn_noise_p", 0.0), closed=True)
        if p > 0 and fn_pool == 0:
            raise ConfigError("fn_noise_p", p, "0 while fn_pool_ratio is 0",
                              hint="Set fn_pool_ratio (e.g. 0.1) to hold out the false-negative pool the noise is drawn from")
        fp = _fraction("fp_noise_ratio", _get(cfg, "fp_noise_ratio", 0.0), closed=False)
        seed = cfg["noise_seed"]
        if seed is not None:  # numpy's generators take seeds >= 0 only
            check_int("noise_seed", seed, 0, "an integer >= 0 or ~ (the config's seed)")
        groups = check_int("pop_groups", _get(cfg, "pop_groups", 10), 1)
        by = check_choice("pop_group_by", _get(cfg, "pop_group_by", "items"), GROUP_BY)
        mode = check_choice("pop_group_mode", _get(cfg, "pop_group_mode", "within"), GROUP_MODES)
        return cls(fn_pool, p, fp, seed, groups, by, mode)

    @classmethod
    def of(cls, cfg) -> "ProtocolSettings":
        """The protocol settings the plugin's Config parsed (``cfg.plugin_settings``), or parsed now
        from a plain RecBole Config (RecBole builds metrics and collectors from whatever Config it has)."""
        parsed = getattr(cfg, "plugin_settings", None)
        protocols = getattr(parsed, "protocols", None)
        return protocols if isinstance(protocols, cls) else cls.from_config(cfg)

    def seed(self, cfg) -> int:
        return int(self.noise_seed if self.noise_seed is not None else (cfg["seed"] or 0))


# The attribute of a training Dataset that carries what the noise protocols did to it (set by
# recbole_dsl.protocols.data_preparation, read by the sampler factory and the tests).
NOISE_ATTR = "dsl_noise"


@dataclass
class TrainingNoise:
    """What the noise protocols did to a training split (all ids are RecBole's internal ids)."""

    settings: ProtocolSettings
    seed: int
    n_train_before: int  # training interactions of the clean split
    fn_pool_user: object = None  # [P] long tensor: the held-out false-negative pool
    fn_pool_item: object = None
    fp_user: object = None  # [F] long tensor: the added false positives
    fp_item: object = None

    @property
    def n_fn_pool(self) -> int:
        return 0 if self.fn_pool_user is None else int(self.fn_pool_user.numel())

    @property
    def n_fp(self) -> int:
        return 0 if self.fp_user is None else int(self.fp_user.numel())
