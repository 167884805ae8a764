"""The config keys RecBole and the plugin know, and what happens to the others.

RecBole keeps any key it is given, so `--rec_los=SL` or `loss_taus: 0.2` runs without a word and the
user believes a setting changed that did not. `unknown_keys` lists the user's keys (files, dict and
command line) that neither side knows, each with a message naming the closest known keys; the Config
warns with them (UnknownKeyWarning), or raises under `strict_keys: True`.

Known to RecBole: its overall, dataset and quick-start property files, the keys its data, trainer,
evaluator and config code reads, and the chosen model's property file and the keys its class (and
its bases) read. A key of another RecBole model is reported as such: it has no effect on this one.
Known to the plugin: its property files and every registered loss's and sampler's keys.
"""
from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Dict, FrozenSet, List, Tuple

import yaml

# config["key"] / config['key'] / config.get("key") in RecBole's source.
_READ = re.compile(r"config(?:\[\s*|\.get\(\s*)[\"'](\w+)[\"']")

# Keys RecBole's Config sets or reads itself rather than from a property file.
_RECBOLE_RUNTIME = frozenset({
    "model", "dataset", "data_path", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec",
    "local_rank", "world_size", "nproc", "ip", "port", "offset", "train_neg_sample_args", "valid_neg_sample_args",
    "test_neg_sample_args", "config_files",
})


class UnknownKeyWarning(UserWarning):
    """A config key neither RecBole nor the plugin knows: it has no effect."""


def _yaml_keys(path: Path) -> FrozenSet[str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return frozenset()
    return frozenset(k for k in data if isinstance(k, str)) if isinstance(data, dict) else frozenset()


def _read_keys(path: Path) -> FrozenSet[str]:
    try:
        return frozenset(_READ.findall(path.read_text(encoding="utf-8")))
    except OSError:
        return frozenset()


def _recbole_root() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def recbole_keys() -> FrozenSet[str]:
    """RecBole's keys that do not belong to one model."""
    root = _recbole_root()
    props = root / "properties"
    keys = set(_RECBOLE_RUNTIME) | _yaml_keys(props / "overall.yaml")
    for f in sorted((props / "dataset").glob("*.yaml")):
        if "url" not in f.name:  # url.yaml / kg_url.yaml map dataset names to download addresses
            keys |= _yaml_keys(f)
    for f in sorted((props / "quick_start_config").glob("*.yaml")):
        keys |= _yaml_keys(f)
    for f in sorted(root.rglob("*.py")):
        if f.relative_to(root).parts[0] != "model":  # a model's keys are its own (model_keys)
            keys |= _read_keys(f)
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def other_model_keys() -> Dict[str, Tuple[str, ...]]:
    """key -> the RecBole models whose property file has it, general recommenders first."""
    import recbole.model.general_recommender as general

    owners: Dict[str, List[str]] = {}
    for f in sorted((_recbole_root() / "properties" / "model").glob("*.yaml")):
        for k in _yaml_keys(f):
            owners.setdefault(k, []).append(f.stem)
    return {k: tuple(sorted(v, key=lambda m: (not hasattr(general, m), m))) for k, v in owners.items()}


@functools.lru_cache(maxsize=None)
def model_keys(model_class) -> FrozenSet[str]:
    """The keys of a model: its property files and the keys its class and its bases read."""
    import inspect

    keys = set()
    props = _recbole_root() / "properties" / "model"
    for cls in getattr(model_class, "__mro__", ()):
        keys |= _yaml_keys(props / f"{cls.__name__}.yaml")
        try:
            src = inspect.getsourcefile(cls)
        except TypeError:
            src = None
        if src:
            keys |= _read_keys(Path(src))
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def plugin_keys(props: Path) -> FrozenSet[str]:
    """The plugin's keys: its property files (in `props`) and its registered losses' and samplers'."""
    from recbole_dsl.losses import LOSSES
    from recbole_dsl.samplers import SAMPLERS

    keys = set(_yaml_keys(props / "overall.yaml")) | _yaml_keys(props / "quick_start.yaml")
    for f in sorted((props / "loss").glob("*.yaml")):
        keys |= _yaml_keys(f)
    for registry in (LOSSES, SAMPLERS):
        for name in registry.names():
            keys |= set(getattr(registry.get(name), "params", {}).values())
    return frozenset(keys)


def unknown_keys(user_keys, model: str, model_class, props: Path) -> List[Tuple[str, str]]:
    """(key, message) for each of `user_keys` that neither RecBole nor the plugin (its property files
    in `props`) knows for this model."""
    known = recbole_keys() | plugin_keys(props) | model_keys(model_class)
    found = []
    for key in user_keys:
        if not isinstance(key, str) or key in known:
            continue
        owners = other_model_keys().get(key)
        if owners:
            shown = ", ".join(owners[:6]) + (", ..." if len(owners) > 6 else "")
            found.append((key, f"{key!r} is a setting of other RecBole models ({shown}), not of {model}: "
                               "it has no effect on this run"))
            continue
        close = difflib.get_close_matches(key, sorted(known | set(other_model_keys())), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        found.append((key, f"{key!r} is a key neither RecBole nor recbole_dsl knows: it has no effect{hint}"))
    return found
