"""The plugin's Config: RecBole's Config plus the plugin's YAML defaults and up-front validation.

Priority, lowest first: RecBole's properties, the plugin's properties/overall.yaml, the
defaults of the chosen loss (properties/loss/<rec_loss>.yaml), then the user's config files,
config dict and command line, exactly as in RecBole.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_dsl.adapters import ADAPTERS, REFUSED
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses import LOSSES
from recbole_dsl.protocols import check_protocol_keys
from recbole_dsl.samplers import SAMPLERS, check_sampler_keys
from recbole_dsl.scoring import PAIR_SCORE_FNS, SCORE_PATHS, check_score_fn

BATCH_MODES = ("interaction", "user")


def properties_dir() -> Path:
    """properties/ sits beside the package in a source tree and inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "properties", here.parent / "properties"):
        if (cand / "overall.yaml").is_file():
            return cand
    raise FileNotFoundError(f"recbole_dsl: properties/overall.yaml not found next to {here}")


@dataclass(frozen=True)
class RecLossSettings:
    """The plugin keys, read and checked once; everything downstream takes plain values."""

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

    @classmethod
    def from_config(cls, cfg) -> "RecLossSettings":
        loss = cfg["rec_loss"]
        LOSSES.get(loss)
        score_fn = check_score_fn(cfg["score_fn"])
        eval_score_fn = cfg["eval_score_fn"]
        eval_score_fn = score_fn if eval_score_fn is None else check_score_fn(eval_score_fn, "eval_score_fn")
        # absent from configs pickled into checkpoints written before the key existed
        pair_score_fn = cfg["pair_score_fn"]
        pair_score_fn = "tanh" if pair_score_fn is None else check_score_fn(pair_score_fn, "pair_score_fn", PAIR_SCORE_FNS)
        SAMPLERS.get(cfg["neg_sampler"])
        neg_num = cfg["neg_num"]
        if isinstance(neg_num, bool) or not isinstance(neg_num, int) or neg_num < 1:
            raise ConfigError("neg_num", neg_num, "an integer >= 1")
        exclude = cfg["exclude_positives"]
        if not isinstance(exclude, bool):
            raise ConfigError("exclude_positives", exclude, "True or False")
        path = cfg["score_path"]
        if path not in SCORE_PATHS:
            raise ConfigError("score_path", path, f"one of {list(SCORE_PATHS)}")
        mode = cfg["train_batch_mode"]
        if mode not in BATCH_MODES:
            raise ConfigError("train_batch_mode", mode, f"one of {list(BATCH_MODES)}")
        k = cfg["positives_per_user"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("positives_per_user", k, "an integer >= 1")
        return cls(loss, score_fn, eval_score_fn, cfg["neg_sampler"], neg_num, exclude, path, mode, k,
                   _switch(cfg, "cpu_malloc_tuning"), _switch(cfg, "cpu_flush_denormal"), pair_score_fn)


def _switch(cfg, key: str) -> bool:
    """A True/False key that defaults to True when absent (configs pickled into checkpoints written
    before the key existed)."""
    value = cfg[key]
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ConfigError(key, value, "True or False")
    return value


def check_model(model_name: str, model_class) -> None:
    if model_name in REFUSED:
        raise ConfigError(
            "model", model_name, f"a supported model: {ADAPTERS.names()}",
            hint=f"rec_loss cannot be used with {model_name}: {REFUSED[model_name]}",
        )
    if getattr(model_class, "type", None) != ModelType.GENERAL:
        kind = getattr(getattr(model_class, "type", None), "name", "non-general").lower()
        raise ConfigError(
            "model", model_name, f"a supported general recommender: {ADAPTERS.names()}",
            hint=f"rec_loss replaces the loss of general (user-item) recommenders; {model_name} is a {kind} model",
        )
    if model_name not in ADAPTERS:
        raise ConfigError(
            "model", model_name, f"one of the models supported with rec_loss: {ADAPTERS.names()}",
            hint="Unset rec_loss to train it with its built-in loss",
        )


class Config(RecBoleConfig):
    """RecBole's Config with the plugin's defaults and checks.

    cmd_args: None reads sys.argv like RecBole does (for user scripts run from a shell);
    a list (possibly empty) is used instead of sys.argv, so library callers, Ray workers and
    test runners never leak their own arguments into the config.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args: Optional[Sequence[str]] = None):
        self._cmd_args = None if cmd_args is None else list(cmd_args)
        super().__init__(model, dataset, config_file_list, config_dict)
        self._check_plugin()

    def _load_cmd_line(self):
        if self._cmd_args is None:
            return super()._load_cmd_line()
        saved = sys.argv
        sys.argv = [saved[0] if saved else "recbole_dsl"] + self._cmd_args
        try:
            return super()._load_cmd_line()
        finally:
            sys.argv = saved

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        self._update_internal_config_dict(str(props / "overall.yaml"))
        loss = self.external_config_dict.get("rec_loss", self.internal_config_dict.get("rec_loss"))
        if loss is not None:
            LOSSES.get(loss)  # unknown names fail here, listing the known ones
            check_model(model, model_class)  # before RecBole's own model-type checks run
            loss_file = props / "loss" / f"{loss}.yaml"
            if loss_file.is_file():
                self._update_internal_config_dict(str(loss_file))

    def _set_default_parameters(self):
        super()._set_default_parameters()
        if self.dataset != "ml-100k":
            path = self.final_config_dict["data_path"]
            if not os.path.isdir(path):
                # RecBole would try to download it and ask on stdin; there is no network here.
                raise ConfigError(
                    "dataset", self.dataset, f"a folder with {self.dataset}.inter at {path}",
                    hint="The folder does not exist (set data_path to the folder that holds it; "
                         "nothing is downloaded)",
                )

    def _set_train_neg_sample_args(self):
        if self.final_config_dict.get("rec_loss") is not None:
            # The plugin samples negatives itself, on the device; RecBole's loader must not.
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_train_neg_sample_args()

    def _check_plugin(self):
        check_protocol_keys(self)  # noise ratios, popularity groups (recbole_dsl/protocols), with or without rec_loss
        if self["rec_loss"] is None:
            return
        settings = RecLossSettings.from_config(self)
        check_sampler_keys(self)  # neg_pop_alpha, and the sampler's fit with the protocols
        loss = LOSSES.get(settings.loss).from_config(self)  # the loss checks its own keys
        if hasattr(loss, "check_neg_num"):
            loss.check_neg_num(settings.neg_num)
