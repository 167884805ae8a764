"""Search spaces: Ray Tune's sampling vocabulary written in YAML, checked before Ray starts.

A space file maps config keys to either a constant or exactly one Ray Tune sampler:

    rec_loss: SL                                           # constant for every trial
    loss_tau: {grid_search: [0.01, 0.025, 0.05, 0.1, 0.2, 0.5]}
    learning_rate: {loguniform: [1.0e-4, 1.0e-2]}          # list = positional arguments
    neg_num: {choice: [64, 256, 1024]}
    dsl_alpha: {uniform: {lower: 0.0, upper: 1.0}}         # mapping = keyword arguments
    tune_options: {search_alg: optuna, num_samples: 30}    # optional defaults of the search

Keys are any RecBole or recbole_dsl config key (plus `model` and `dataset`). Everything is
validated here, before any trial starts: unknown keys, unknown samplers, bad sampler
arguments and values the plugin's Config refuses all raise ConfigError naming the key.
"""
from __future__ import annotations

import contextlib
import difflib
import itertools
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import yaml

from recbole_dsl.errors import ConfigError
from recbole_dsl.sources import load_yaml  # noqa: F401  (the search space files' reader)

# Ray Tune's samplers (ray.tune.<name>) that a space file may use.
SAMPLERS = (
    "grid_search", "choice",
    "uniform", "quniform", "loguniform", "qloguniform",
    "randint", "qrandint", "lograndint", "qlograndint",
    "randn", "qrandn",
)
OPTIONS_KEY = "tune_options"
# Options a space file may carry as defaults (the command line and the Python API override them).
SPACE_OPTIONS = ("num_samples", "search_alg", "scheduler", "grace_period", "reduction_factor", "startup_trials")
# Keys a space must not search: the search sets them per trial or compares trials by them.
RESERVED = {
    "checkpoint_dir": "each trial gets its own checkpoint folder",
    "gpu_id": "each trial gets the GPUs Ray assigns to it (set gpus_per_trial instead)",
    "valid_metric": "the metric that compares trials cannot itself be searched; set it outside the space",
    "valid_metric_bigger": "the direction that compares trials cannot itself be searched",
}
# Keys that choose which files RecBole and the plugin load their defaults from.
STRUCTURAL = ("model", "dataset", "rec_loss")



@dataclass(frozen=True)
class Param:
    """One key of a space: a constant, or one Ray Tune sampler with its arguments."""

    key: str
    sampler: Optional[str]  # None: constant
    args: Any = None  # constant value, or the sampler's arguments (list or mapping)

    @property
    def is_constant(self) -> bool:
        return self.sampler is None

    @property
    def is_grid(self) -> bool:
        return self.sampler == "grid_search"

    def _call(self, name=None):
        from ray import tune

        fn = getattr(tune, name or self.sampler)
        if isinstance(self.args, Mapping):
            return fn(**self.args)
        return fn(*self.args)

    def domain(self, grid_as_choice: bool = False, shuffle_seed: Optional[int] = None):
        """What goes into Ray's param_space for this key (grid values shuffled when a seed is given)."""
        if self.is_constant:
            return self.args
        if self.sampler in ("grid_search", "choice"):
            from ray import tune

            values = list(self.args)
            if self.is_grid and not grid_as_choice:
                if shuffle_seed is not None:
                    random.Random(f"{shuffle_seed}-{self.key}").shuffle(values)
                return {"grid_search": values}
            return tune.choice(values)
        return self._call()

    def categories(self) -> Optional[list]:
        """The finite set of values, for grid_search and choice; None for continuous samplers."""
        if self.sampler in ("grid_search", "choice"):
            return list(self.args)
        return None

    def representatives(self) -> list:
        """Values to validate before the search: every category, or the ends (and middle) of a range."""
        if self.is_constant:
            return [self.args]
        cats = self.categories()
        if cats is not None:
            return cats
        dom = self._call()
        lo, hi = getattr(dom, "lower", None), getattr(dom, "upper", None)
        if self.sampler in ("randn", "qrandn"):
            mean = dom.get_sampler().mean if hasattr(dom.get_sampler(), "mean") else 0.0
            return [float(mean)]
        if self.sampler in ("randint", "lograndint"):
            vals = [int(lo), int(hi) - 1]
        elif self.sampler in ("qrandint", "qlograndint"):
            vals = [int(lo), int(hi)]
        elif self.sampler == "uniform":
            vals = [float(lo), (float(lo) + float(hi)) / 2, float(hi)]
        elif self.sampler == "loguniform":
            vals = [float(lo), math.sqrt(float(lo) * float(hi)), float(hi)]
        else:  # quniform, qloguniform
            vals = [float(lo), float(hi)]
        out = []
        for v in vals:
            if v not in out:
                out.append(v)
        return out

    def spec(self):
        return self.args if self.is_constant else {self.sampler: self.args}


@dataclass
class SearchSpace:
    """A parsed space: constants and sampled keys, plus option defaults from `tune_options`."""

    params: Dict[str, Param]
    options: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source else "space"

    def constants(self) -> Dict[str, Any]:
        return {k: p.args for k, p in self.params.items() if p.is_constant}

    def searched(self) -> List[str]:
        return [k for k, p in self.params.items() if not p.is_constant]

    def has_grid(self) -> bool:
        return any(p.is_grid for p in self.params.values())

    def param_space(self, grid_as_choice: bool = False, shuffle_seed: Optional[int] = None) -> Dict[str, Any]:
        """Ray's param_space: the sampled keys only (constants join the trials' base config)."""
        return {k: p.domain(grid_as_choice, shuffle_seed) for k, p in self.params.items() if not p.is_constant}

    def grid_size(self) -> int:
        n = 1
        for p in self.params.values():
            if p.is_grid:
                n *= len(p.args)
        return n

    def to_dict(self) -> Dict[str, Any]:
        d = {k: p.spec() for k, p in self.params.items()}
        if self.options:
            d[OPTIONS_KEY] = dict(self.options)
        return d

    def validation_points(self, cap: int = 256) -> List[Dict[str, Any]]:
        """Points of the space whose configs are built before the search starts.

        The full cross product of every key's representative values when it has at most `cap`
        points; otherwise every value of every key once, for each combination of the structural
        keys (model, dataset, rec_loss), the other keys at their first value.
        """
        reps = {k: p.representatives() for k, p in self.params.items()}
        keys = list(reps)
        total = 1
        for v in reps.values():
            total *= len(v)
        if total <= cap:
            return [dict(zip(keys, combo)) for combo in itertools.product(*(reps[k] for k in keys))]
        struct = [k for k in keys if k in STRUCTURAL]
        base = {k: v[0] for k, v in reps.items()}
        points = []
        for combo in itertools.product(*(reps[k] for k in struct)):
            fixed = dict(base, **dict(zip(struct, combo)))
            points.append(fixed)
            for k in keys:
                if k in struct:
                    continue
                for v in reps[k][1:]:
                    points.append(dict(fixed, **{k: v}))
        return points


def _parse_param(key: str, spec: Any) -> Param:
    if isinstance(spec, Mapping) and any(k in SAMPLERS for k in spec):
        if len(spec) != 1:
            raise ConfigError(
                key, dict(spec), f"exactly one Ray Tune sampler ({', '.join(SAMPLERS)})",
                hint="Write one sampler per key, e.g. {grid_search: [0.05, 0.1]}",
            )
        (sampler, args), = spec.items()
        if sampler in ("grid_search", "choice"):
            if not isinstance(args, (list, tuple)) or len(args) == 0:
                raise ConfigError(key, dict(spec), f"{sampler} with a non-empty list of values")
            return Param(key, sampler, list(args))
        if isinstance(args, (int, float)) and not isinstance(args, bool):
            args = [args]
        if not isinstance(args, (list, tuple, Mapping)):
            raise ConfigError(key, dict(spec), f"{sampler} with a list (positional) or mapping (keyword) of arguments")
        param = Param(key, sampler, dict(args) if isinstance(args, Mapping) else list(args))
        try:
            dom = param._call()
            # Ray checks bounds lazily for some samplers: draw once to surface bad arguments now.
            dom.sample()
        except Exception as e:  # noqa: BLE001 - Ray raises TypeError, ValueError, AssertionError
            raise ConfigError(
                key, dict(spec), f"valid arguments of ray.tune.{sampler}",
                hint=str(e) or type(e).__name__,
            ) from None
        return param
    return Param(key, None, spec)


def parse_space(data: Mapping, source: Optional[str] = None) -> SearchSpace:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("tune", source or data, "a YAML mapping of config keys to values or Ray Tune samplers")
    params, options = {}, {}
    for key, spec in data.items():
        key = str(key)
        if key == OPTIONS_KEY:
            if not isinstance(spec, Mapping):
                raise ConfigError(OPTIONS_KEY, spec, f"a mapping with some of {list(SPACE_OPTIONS)}")
            for opt, val in spec.items():
                if opt not in SPACE_OPTIONS:
                    raise ConfigError(f"{OPTIONS_KEY}.{opt}", val, f"one of the options {list(SPACE_OPTIONS)}")
                options[opt] = val
            continue
        if key in RESERVED:
            raise ConfigError(key, spec, "a key the search may set", hint=f"It cannot be in a search space: {RESERVED[key]}")
        params[key] = _parse_param(key, spec)
    if not params:
        raise ConfigError("tune", source or dict(data), "a space with at least one config key")
    return SearchSpace(params, options, source)


def load_space(space: Union[str, os.PathLike, Mapping, SearchSpace]) -> SearchSpace:
    """A SearchSpace from a YAML file, a shipped space's name (`SL`), a dict in the same format,
    or a SearchSpace."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return parse_space(space)
    path = Path(space)
    if not path.is_file():
        # A bare name (SL, PSL.yaml, ...) names one of the shipped spaces, installed or not.
        from recbole_dsl.config import properties_dir

        shipped = properties_dir() / "tune" / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
        if path.parent == Path(".") and shipped.is_file():
            path = shipped
        else:
            names = sorted(f.stem for f in (properties_dir() / "tune").glob("*.yaml"))
            raise ConfigError("tune", str(space), f"a search space YAML file or a shipped space {names}",
                              hint="The file does not exist")
    try:
        data = load_yaml(path)
    except yaml.YAMLError as e:
        raise ConfigError("tune", str(space), "a valid YAML file", hint=str(e).replace("\n", " ")) from None
    return parse_space(data, str(path))


# ----------------------------------------------------------------------------------------------
# Validation against the plugin's Config

@contextlib.contextmanager
def preserved_env(*names):
    """RecBole's Config writes CUDA_VISIBLE_DEVICES from gpu_id: keep the driver's own value."""
    saved = {n: os.environ.get(n) for n in names}
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@contextlib.contextmanager
def quiet_plugin_warnings():
    """Validation builds configs at points a trial may never draw (a range's middle, e.g. dsl_gamma 0 of
    uniform(-1, 1)): warnings about such a point (keys it leaves inert) would mislead; errors still raise."""
    log = logging.getLogger("recbole_dsl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _yaml_keys(path: Path) -> set:
    if not path.is_file():
        return set()
    data = load_yaml(path) or {}
    return set(data) if isinstance(data, Mapping) else set()


def known_keys(models: Iterable[str] = (), datasets: Iterable[str] = ()) -> set:
    """Every key RecBole 1.2.1 or the plugin reads: RecBole's defaults, argument lists, the given
    models' and datasets' defaults, and the plugin's overall, loss and quick-start files."""
    import recbole
    from recbole.utils import argument_list

    from recbole_dsl.config import properties_dir

    rb = Path(recbole.__file__).resolve().parent / "properties"
    keys = {"model", "dataset"}
    keys |= _yaml_keys(rb / "overall.yaml") | _yaml_keys(rb / "dataset" / "sample.yaml")
    for f in (rb / "quick_start_config").glob("*.yaml"):
        keys |= _yaml_keys(f)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name, []))
    for m in models:
        keys |= _yaml_keys(rb / "model" / f"{m}.yaml")
    for d in datasets:
        keys |= _yaml_keys(rb / "dataset" / f"{d}.yaml")
    props = properties_dir()
    keys |= _yaml_keys(props / "overall.yaml") | _yaml_keys(props / "quick_start.yaml")
    for f in (props / "loss").glob("*.yaml"):
        keys |= _yaml_keys(f)
    return keys


def validate_space(space: SearchSpace, model: str, dataset: str, base_config: Mapping[str, Any],
                   internal_defaults: Optional[Mapping[str, Any]] = None) -> int:
    """Raise ConfigError for the first problem in `space`; return how many configs were built.

    `base_config` is the merged external config the trials start from (files, dict, command line);
    each validation point is laid over it and built with the plugin's Config, which checks every
    plugin key's value (and RecBole's model and dataset names).
    """
    from recbole_dsl.config import Config

    models = [model] + [v for v in space.params["model"].representatives()] if "model" in space.params else [model]
    datasets = [dataset] + [v for v in space.params["dataset"].representatives()] if "dataset" in space.params else [dataset]
    known = known_keys(models, datasets)
    internal_defaults = internal_defaults or {}
    for key, p in space.params.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            raise ConfigError(
                key, p.spec(), "a RecBole or recbole_dsl config key",
                hint=f"Unknown key{'; did you mean ' + ' or '.join(close) + '?' if close else ''}",
            )
        # A one-key mapping whose key is not a sampler is a typo unless the key takes a mapping.
        if p.is_constant and isinstance(p.args, Mapping) and len(p.args) == 1:
            default = internal_defaults.get(key, base_config.get(key))
            if not isinstance(default, Mapping) and default is not None:
                (name,) = p.args
                raise ConfigError(key, dict(p.args), f"a value or one Ray Tune sampler ({', '.join(SAMPLERS)})",
                                  hint=f"{name!r} is not a Ray Tune sampler")
    points = space.validation_points()
    for point in points:
        m = point.get("model", model)
        d = point.get("dataset", dataset)
        cfg = dict(base_config)
        cfg.update({k: v for k, v in point.items() if k not in ("model", "dataset")})
        cfg["gpu_id"] = ""  # never touch the driver's devices while validating
        try:
            with preserved_env("CUDA_VISIBLE_DEVICES"), quiet_plugin_warnings():
                Config(model=m, dataset=d, config_dict=cfg, cmd_args=[])
        except ConfigError:
            raise
        except Exception as e:  # RecBole's own errors: unknown model or dataset, bad types
            searched = {k: v for k, v in point.items() if not space.params[k].is_constant}
            raise ConfigError(
                "tune", searched, "values RecBole accepts",
                hint=f"{type(e).__name__}: {e}",
            ) from None
    return len(points)
