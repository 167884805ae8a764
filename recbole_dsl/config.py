"""The plugin's Config: RecBole's Config plus the plugin's YAML defaults and up-front validation.

Priority, lowest first: RecBole's properties, the plugin's properties/overall.yaml, the
defaults of the chosen loss (properties/loss/<rec_loss>.yaml), then the user's config files,
config dict and command line, exactly as in RecBole. The plugin's keys are parsed and checked
once, into `config.plugin_settings` (recbole_dsl.settings), re-parsed when a key is set later.
"""
from __future__ import annotations

import ast
import contextlib
import datetime
import difflib
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_dsl.adapters import ADAPTERS, REFUSED
from recbole_dsl.compat import keep_anomaly_mode
from recbole_dsl.checks import check_int, check_real
from recbole_dsl.errors import ConfigError
from recbole_dsl.keys import UnknownKeyWarning, unknown_keys
from recbole_dsl.losses import LOSSES
from recbole_dsl.protocols.metrics import register_metrics
from recbole_dsl.settings import PluginSettings


def properties_dir() -> Path:
    """properties/ sits beside the package in a source tree and inside it in an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "properties", here.parent / "properties"):
        if (cand / "overall.yaml").is_file():
            return cand
    raise FileNotFoundError(f"recbole_dsl: properties/overall.yaml not found next to {here}")


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


# RecBole's external-library models (their module names), which need a package RecBole does not install.
_EXLIB = ("lightgbm", "xgboost")


def literal_value(text: str):
    """A command-line / config-dict string as RecBole reads it, without `eval`: a Python literal of
    the types RecBole keeps (number, str, list, tuple, dict, bool, None), true/false in any case as a
    bool, anything else as the string itself."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        low = text.lower()
        return True if low == "true" else False if low == "false" else text
    if value is not None and not isinstance(value, (str, int, float, list, tuple, dict, bool)):
        return text  # a set, bytes or complex: RecBole keeps the string for types it does not use
    return value


def _closest_models(name: str) -> str:
    import importlib

    names = set()
    for sub in ("general_recommender", "context_aware_recommender", "sequential_recommender",
                "knowledge_aware_recommender"):
        mod = importlib.import_module(f"recbole.model.{sub}")
        names |= {n for n in dir(mod) if n[:1].isupper()}
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.5)
    close += [n for n in sorted(names) if n.lower() == str(name).lower() and n not in close]
    return f"RecBole has no model {name!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")


@contextlib.contextmanager
def default_process_group_timeout(seconds: float):
    """While RecBole's own nccl setup runs, make init_process_group's timeout `seconds`."""
    import torch.distributed as dist

    init = dist.init_process_group

    def with_timeout(*args, **kwargs):
        kwargs.setdefault("timeout", datetime.timedelta(seconds=seconds))
        return init(*args, **kwargs)

    dist.init_process_group = with_timeout
    try:
        yield
    finally:
        dist.init_process_group = init


class Config(RecBoleConfig):
    """RecBole's Config with the plugin's defaults and checks.

    cmd_args: None reads sys.argv like RecBole does (for user scripts run from a shell);
    a list (possibly empty) is used instead of sys.argv, so library callers, Ray workers and
    test runners never leak their own arguments into the config.
    """

    plugin_settings: Optional[PluginSettings] = None

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args: Optional[Sequence[str]] = None):
        self._cmd_args = None if cmd_args is None else list(cmd_args)
        # PopGroupNDCG / PopGroupRecall must be in RecBole's metric registry before its Config
        # checks the metric names.
        register_metrics()
        with keep_anomaly_mode():
            super().__init__(model, dataset, config_file_list, config_dict)
        self._parse_plugin()
        self._check_keys()

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if self.plugin_settings is not None:  # a key set after parsing: parse (and check) again
            self._parse_plugin()

    def _convert_config_dict(self, config_dict):
        """Command-line and config-dict strings as Python literals (numbers, lists, True, None, ...).

        RecBole's own conversion runs `eval` on every such string, so `--neg_num=1/0` raised from
        inside RecBole and any expression ran. A string that is not a literal stays a string (then
        the key's check names it), as RecBole keeps names it cannot evaluate."""
        for key, param in config_dict.items():
            if isinstance(param, str):
                config_dict[key] = literal_value(param)
        return config_dict

    def _load_config_files(self, file_list):
        """RecBole's reading of the config files, with an empty file as no keys (RecBole's own fails
        with a TypeError on one) and anything but a mapping of keys refused, naming the file."""
        import yaml

        merged = {}
        for file in file_list or []:
            if not os.path.isfile(file):
                raise ConfigError("config_files", str(file), "YAML files that exist", hint="the file is not there")
            with open(file, "r", encoding="utf-8") as f:
                try:
                    data = yaml.load(f.read(), Loader=self.yaml_loader)
                except yaml.YAMLError as e:
                    raise ConfigError("config_files", str(file), "YAML files", hint=f"it is not valid YAML: {e}") from None
            if data is None:
                continue
            if not isinstance(data, dict):
                raise ConfigError("config_files", str(file), "YAML files of `key: value` lines",
                                  hint=f"it holds a {type(data).__name__}")
            merged.update(data)
        return merged

    def _load_cmd_line(self):
        args = sys.argv[1:] if self._cmd_args is None else self._cmd_args
        given = {}
        for arg in args:
            if isinstance(arg, str) and arg.startswith("--") and len(arg[2:].split("=")) == 2:
                key, value = arg[2:].split("=")
                if given.setdefault(key, value) != value:
                    raise ConfigError(key, [given[key], value], "one value",
                                      hint=f"--{key} is given twice on the command line")
        if self._cmd_args is None:
            return super()._load_cmd_line()
        saved = sys.argv
        sys.argv = [saved[0] if saved else "recbole_dsl"] + self._cmd_args
        try:
            return super()._load_cmd_line()
        finally:
            sys.argv = saved

    def _get_model_and_dataset(self, model, dataset):
        try:
            return super()._get_model_and_dataset(model, dataset)
        except (ValueError, ImportError, AttributeError) as e:
            name = model if model is not None else self.external_config_dict.get("model")
            if not isinstance(name, str) or name.lower() in _EXLIB:
                raise  # an external-library model whose library is missing: RecBole's ImportError says which
            raise ConfigError("model", name, f"a RecBole model name, e.g. one served with rec_loss: {ADAPTERS.names()}",
                              hint=_closest_models(name)) from e

    def _check_keys(self):
        """Warn about (or with strict_keys, refuse) keys neither RecBole nor the plugin knows."""
        for key, message in unknown_keys(list(self.external_config_dict), self.model, self.model_class,
                                         properties_dir()):
            if self.plugin_settings.strict_keys:
                raise ConfigError(key, self.external_config_dict[key], "a key RecBole or recbole_dsl knows "
                                  "(strict_keys: True)", hint=message)
            warnings.warn(UnknownKeyWarning(f"recbole_dsl: {message} (strict_keys: True makes this an error)"),
                          stacklevel=3)

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

    def _init_device(self):
        """RecBole's device setup, plus distributed training on CPUs: RecBole hard-codes the nccl
        backend and CUDA devices, so a run with `local_rank` set (a rank of `nproc` / `world_size`)
        and no GPU joins a gloo process group on the CPU instead. On GPUs RecBole's own nccl path
        runs unchanged. Either way the group waits at most `ddp_timeout` seconds for a peer."""
        d = self.final_config_dict
        if "local_rank" not in d:
            return super()._init_device()
        gpu_id = ",".join(map(str, d["gpu_id"])) if isinstance(d["gpu_id"], tuple) else str(d["gpu_id"] or "")
        timeout = check_real("ddp_timeout", d.get("ddp_timeout", 600), "a number of seconds > 0", lambda v: v > 0)
        import torch.distributed as dist

        if gpu_id and torch.cuda.is_available():
            with default_process_group_timeout(timeout):
                return super()._init_device()
        d["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        rank = check_int("local_rank", d["local_rank"], 0) + check_int("offset", d.get("offset") or 0, 0)
        world = check_int("world_size", d.get("world_size"), 1)
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout),
                                    init_method=f"tcp://{d.get('ip') or 'localhost'}:{d.get('port') or 5678}")
        d["device"] = torch.device("cpu")
        d["single_spec"] = False
        if d["local_rank"] != 0:  # as RecBole: only the first rank of a node logs
            d["state"], d["show_progress"], d["verbose"] = "error", False, False

    def _set_train_neg_sample_args(self):
        if self.final_config_dict.get("rec_loss") is not None:
            # The plugin samples negatives itself, on the device; RecBole's loader must not.
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_train_neg_sample_args()

    def _parse_plugin(self):
        """Every plugin key checked (ConfigError on a bad value, before anything is built)."""
        settings = PluginSettings.from_config(self)
        if settings.rec is not None:
            ADAPTERS.get(self["model"]).check_run(self, settings.rec)
        self.plugin_settings = settings
