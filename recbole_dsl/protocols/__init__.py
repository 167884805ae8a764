"""Robustness and fairness protocols of the BSL / PSL / DSL papers, for any RecBole dataset.

- noise injection on the training split (false-negative pool, false positives):
  `data_preparation` (RecBole's, with the protocols applied), keys in properties/overall.yaml;
- the popularity-shift OOD split, written as RecBole benchmark files: `write_ood_split`,
  ``python -m recbole_dsl.protocols.ood_split``;
- fairness metrics per item-popularity group (`PopGroupNDCG`, `PopGroupRecall`, registered with
  RecBole's metrics on import) and the Collector fix RecBole's own popularity metrics need.
"""
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings, TrainingNoise
from recbole_dsl.protocols.metrics import PopGroupNDCG, PopGroupRecall, register_metrics

register_metrics()


def check_protocol_keys(cfg) -> ProtocolSettings:
    """Validate the protocol keys of a Config (ConfigError on a bad value); with or without rec_loss."""
    from recbole_dsl.errors import ConfigError

    s = ProtocolSettings.from_config(cfg)
    if s.fn_noise_p > 0 and cfg["rec_loss"] is None:
        raise ConfigError("fn_noise_p", s.fn_noise_p, "0 when rec_loss is unset",
                          hint="false negatives are drawn by the plugin's negative sampler, which runs with rec_loss set")
    return s


def __getattr__(name):
    # Modules that import RecBole's data pipeline are loaded on first use.
    if name == "data_preparation":
        from recbole_dsl.protocols.data import data_preparation

        return data_preparation
    if name == "Collector":
        from recbole_dsl.protocols.collector import Collector

        return Collector
    if name in ("write_ood_split", "popularity_shift_split"):
        from recbole_dsl.protocols import ood_split

        return getattr(ood_split, name)
    raise AttributeError(f"module 'recbole_dsl.protocols' has no attribute {name!r}")


__all__ = ["NOISE_ATTR", "ProtocolSettings", "TrainingNoise", "PopGroupNDCG", "PopGroupRecall", "register_metrics",
           "check_protocol_keys", "data_preparation", "Collector", "write_ood_split", "popularity_shift_split"]
