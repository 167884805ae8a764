"""Robustness and fairness protocols of the BSL / PSL / DSL papers, for any RecBole dataset.

- noise injection on the training split (false-negative pool, false positives):
  `data_preparation` (RecBole's, with the protocols applied), keys in properties/overall.yaml;
- the popularity-shift OOD split, written as RecBole benchmark files:
  `recbole_dsl.protocols.ood_split.write_ood_split`, ``python -m recbole_dsl.protocols.ood_split``;
- fairness metrics per item-popularity group (`PopGroupNDCG`, `PopGroupRecall`; the plugin's
  Config adds them to RecBole's metric registry with `register_metrics`) and the Collector fix
  RecBole's own popularity metrics need.
"""
from recbole_dsl.protocols.settings import NOISE_ATTR, ProtocolSettings, TrainingNoise
from recbole_dsl.protocols.metrics import PopGroupNDCG, PopGroupRecall, register_metrics
from recbole_dsl.protocols.collector import Collector
from recbole_dsl.protocols.data import data_preparation

__all__ = ["NOISE_ATTR", "ProtocolSettings", "TrainingNoise", "PopGroupNDCG", "PopGroupRecall", "register_metrics",
           "Collector", "data_preparation"]
