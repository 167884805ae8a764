"""Reading a key the way RecBole's Config will, before any Config exists (the command line and the
launchers need `model`, `dataset` or the distributed keys to decide what to build)."""
from __future__ import annotations

import re
from typing import Any, Mapping

import yaml


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with RecBole's float rule, so `1e-3` is a float, as in RecBole's files."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)


def key_from_sources(key: str, config_file_list=None, config_dict=None, cmd_args=(), default=None):
    """`model` or `dataset` as RecBole would read it from files, dict and command line, else `default`."""
    value = None
    for f in config_file_list or []:
        try:
            d = load_yaml(f) or {}
        except Exception:  # noqa: BLE001
            continue  # RecBole's Config reports unreadable files itself
        if isinstance(d, Mapping) and d.get(key) is not None:
            value = d[key]
    if config_dict and config_dict.get(key) is not None:
        value = config_dict[key]
    for a in cmd_args or ():
        if a.startswith(f"--{key}="):
            value = a.split("=", 1)[1]
    return default if value in (None, "") else value
