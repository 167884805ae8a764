"""Property-based fuzz of the plugin's configuration keys (hypothesis).

The keys are derived, not listed: every key of properties/overall.yaml and properties/loss/*.yaml
and every YAML key a registered loss or sampler declares in ``params``, so a new key is fuzzed
as soon as it exists. A case draws a combination (model x rec_loss x neg_sampler, including
refused models, a sequential one and conflicting sampler/loss/model kinds), gives 1-3 keys a
hostile value (wrong types, out-of-range and non-finite numbers, empty and huge values, valid
values in odd places), sometimes adds an unknown key or repeats a command-line key, and delivers
every key through a channel hypothesis picks: the config dict, a YAML file or the command line
(``--key=value``, typed as a user would).

Oracle: building the plugin's Config either raises ConfigError naming a key the case set (or a
key it conflicts with, RELATED, or the key its combination alone is refused on), or succeeds and
then one batch trains: the dataset is split by recbole_dsl's data_preparation, the model built
with get_model, one batch of calculate_loss gives a finite loss and finite gradients. A
ConfigError while the model and its sampler are built is "before training" too; one raised by
the batch itself, and any other exception (from RecBole, torch, numpy or the plugin), fails the
property: the product is fixed, not this test.
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from helpers import FAST
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from recbole.data import create_dataset  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_dsl import Config, ConfigError, LOSSES, SAMPLERS, get_model  # noqa: E402
from recbole_dsl.config import properties_dir  # noqa: E402
from recbole_dsl.data import UserGroupedTrainDataLoader  # noqa: E402
from recbole_dsl.losses.bsl import BSL_FORMS  # noqa: E402
from recbole_dsl.losses.psl import ACTIVATIONS  # noqa: E402
from recbole_dsl.losses.slk import QUANTILES  # noqa: E402
from recbole_dsl.protocols.data import data_preparation  # noqa: E402
from recbole_dsl.protocols.settings import GROUP_BY, GROUP_MODES  # noqa: E402
from recbole_dsl.scoring import PAIR_SCORE_FNS, SCORE_FNS, SCORE_PATHS  # noqa: E402
from recbole_dsl.settings import BATCH_MODES  # noqa: E402


# -- the keys ------------------------------------------------------------------------------------
def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _property_files() -> List[Path]:
    props = properties_dir()
    return [props / "overall.yaml"] + sorted((props / "loss").glob("*.yaml"))


def plugin_keys() -> List[str]:
    """Every key of the plugin's property files and every YAML key of a loss's or sampler's params."""
    keys = set()
    for path in _property_files():
        keys |= set(_yaml(path))
    for registry in (LOSSES, SAMPLERS):
        for _, cls in registry.items():
            keys |= set(cls.params.values())
    return sorted(keys)


KEYS = plugin_keys()

# Valid values worth drawing for the choice keys (the property files give one each; these are
# the rest), so that valid-but-conflicting settings are drawn as often as broken ones.
CHOICES: Dict[str, Tuple] = {
    "rec_loss": tuple(LOSSES.names()),
    "neg_sampler": tuple(SAMPLERS.names()),
    "score_fn": SCORE_FNS,
    "eval_score_fn": SCORE_FNS,
    "pair_score_fn": PAIR_SCORE_FNS,
    "score_path": SCORE_PATHS,
    "train_batch_mode": BATCH_MODES,
    "pop_group_by": GROUP_BY,
    "pop_group_mode": GROUP_MODES,
    "bsl_form": BSL_FORMS,
    "psl_activation": tuple(sorted(ACTIVATIONS)),
    "slk_quantile": QUANTILES,
}


def _valid_values() -> Dict[str, List[Any]]:
    """Per key, the values the property files give it (valid by construction) and CHOICES."""
    out: Dict[str, List[Any]] = {k: list(CHOICES.get(k, ())) for k in KEYS}
    for path in _property_files():
        for k, v in _yaml(path).items():
            if v not in out[k]:
                out[k].append(v)
    return out


VALID = _valid_values()

# Keys an error may name when a case sets the key on the left: the checks that couple two keys.
RELATED: Dict[str, set] = {
    "rec_loss": {"model", "neg_sampler"},  # the model must take a loss swap; `all` needs a softmax loss
    "neg_sampler": {"rec_loss", "model"},  # `all`: softmax-family losses and embedding models only
    "neg_num": {"slk_k", "dsl_slate_size"},  # both are bounded by neg_num
    "exclude_positives": {"neg_num"},  # neg_num < the number of items when excluding positives
    "slk_quantile": {"slk_k"},  # sample: slk_k <= neg_num + 1
    "fn_noise_p": {"neg_sampler"},  # false negatives replace negatives row by row
}

# Models of every kind: embedding (BPR = MF), graph, autoencoder, pair scorer, two that are not
# trained by gradient descent (refused with rec_loss) and a sequential one (not general).
MODELS = ("BPR", "LightGCN", "MultiVAE", "NeuMF", "ItemKNN", "Pop", "SASRec")

# tests/helpers.py FAST, smaller: one batch of one epoch is trained; embedding_size is per model below
BASE = {**{k: v for k, v in FAST.items() if k != "embedding_size"}, "train_batch_size": 512}
# Small sizes, in each model's own keys (a key of another model is reported as unknown).
MODEL_BASE = {
    "BPR": {"embedding_size": 16},
    "LightGCN": {"embedding_size": 16, "n_layers": 1},
    "MultiVAE": {"mlp_hidden_size": [32], "latent_dimension": 16},
    "NeuMF": {"mf_embedding_size": 16, "mlp_embedding_size": 16, "mlp_hidden_size": [16]},
    # with rec_loss unset: RecBole's own CE loss, and the timestamps it orders the sequences by
    "SASRec": {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "train_neg_sample_args": None,
               "load_col": {"inter": ["user_id", "item_id", "timestamp"]}},
}

CHANNELS = ("dict", "yaml", "cmd")

# -- hostile values -------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
LONG = "x" * 10_000
WRONG_TYPES = [None, True, False, [], [1, 2], [[]], {}, {"a": 1}]
# Strings as they come from YAML, a dict or the command line. "1/0" looks like an expression:
# RecBole evaluates command-line and config-dict strings, a literal-only parse must not.
STRINGS = ["", " ", LONG, "abc", "None", "True", "yes", "1e5", "[1, 2", "{}", "ü", "1/0"]
INTS = [0, -1, 1, 2, 3, 5, 40, 10**30, -(10**30), 2**63, 2**64]
FLOATS = [0.0, -0.0, -1.0, 5e-324, 1e-300, 1e-7, 1e-6, 1e-3, 0.05, 0.5, 0.999, 1.0, 1.5, 3.0, 1e6, 1e8, 1e300,
          -1e6, -1e300, NAN, INF, -INF]
UNKNOWN_KEYS = ("fuzz_unknown_key", "loss_taus", "neg_nums", "rec_los", "dsl_kapa")


def values_for(key: str):
    return st.one_of(
        st.sampled_from(VALID[key]),
        st.sampled_from(WRONG_TYPES),
        st.sampled_from(STRINGS),
        st.sampled_from(INTS),
        st.integers(-3, 50),
        st.sampled_from(FLOATS),
        # no subnormals: the plugin's trainers flush them to zero process-wide (cpu_flush_denormal),
        # and hypothesis refuses to draw them once an earlier test has trained
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    )


ANY_VALUE = st.one_of(st.sampled_from(WRONG_TYPES), st.sampled_from(STRINGS), st.sampled_from(INTS),
                      st.sampled_from(FLOATS))


def _short(v) -> str:
    if isinstance(v, str) and len(v) > 40:
        return f"{v[:1]!r} * {len(v)}" if v == v[:1] * len(v) else repr(v[:40] + "...")
    return repr(v)


@dataclass
class Case:
    model: str
    rec_loss: Optional[str]
    neg_sampler: str
    values: Dict[str, Any]  # the hostile settings (key -> value)
    channels: Dict[str, str] = field(default_factory=dict)  # key -> dict | yaml | cmd (default dict)
    unknown: Optional[Tuple[str, Any]] = None  # a key the plugin and RecBole do not know
    duplicate: Optional[Tuple[str, str]] = None  # a command-line key given again with this value

    def settings(self) -> Dict[str, Any]:
        out = {"rec_loss": self.rec_loss, "neg_sampler": self.neg_sampler}
        out.update(self.values)
        if self.unknown is not None:
            out[self.unknown[0]] = self.unknown[1]
        return out

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={_short(v)}" for k, v in self.values.items())
        extra = f", unknown={self.unknown[0]}={_short(self.unknown[1])}" if self.unknown else ""
        extra += f", duplicate=--{self.duplicate[0]}={_short(self.duplicate[1])}" if self.duplicate else ""
        return (f"Case(model={self.model}, rec_loss={self.rec_loss}, neg_sampler={self.neg_sampler}, {vals}, "
                f"channels={self.channels}{extra})")

    def _repr_pretty_(self, p, cycle):  # hypothesis prints failing examples with this (10k strings shortened)
        p.text(repr(self))


def cmd_value(v) -> str:
    """A value as a user types it after --key=: str() of numbers, True/False/None, Python-literal
    lists and dicts, strings as they are."""
    return str(v)


@st.composite
def cases(draw) -> Case:
    model = draw(st.sampled_from(MODELS))
    rec_loss = draw(st.sampled_from((None,) + tuple(LOSSES.names())))
    sampler = draw(st.sampled_from(SAMPLERS.names()))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    values = {k: draw(values_for(k)) for k in keys}
    unknown = draw(st.none() | st.tuples(st.sampled_from(UNKNOWN_KEYS), ANY_VALUE))
    case = Case(model, rec_loss, sampler, values, unknown=unknown)
    case.channels = {k: draw(st.sampled_from(CHANNELS)) for k in case.settings()}
    cmd_keys = [k for k in keys if case.channels[k] == "cmd"]
    if cmd_keys and draw(st.integers(0, 9)) == 0:
        k = draw(st.sampled_from(cmd_keys))
        case.duplicate = (k, cmd_value(values[k]) + "0")  # a different string for the same key
    return case


# -- building and training -------------------------------------------------------------------------
class Env:
    def __init__(self, data_path: Path, tmp: Path):
        self.data_path, self.tmp = str(data_path), tmp
        self.datasets: Dict[str, Any] = {}  # model name -> RecBole dataset before the split


def build_config(case: Case, env: Env) -> Config:
    config_dict = dict(BASE, **MODEL_BASE.get(case.model, {}), data_path=env.data_path,
                       checkpoint_dir=str(env.tmp / "saved"))
    file_part, cmd = {}, []
    for key, value in case.settings().items():
        config_dict.pop(key, None)  # the case's channel decides, whatever its priority
        channel = case.channels.get(key, "dict")
        if channel == "dict":
            config_dict[key] = copy.deepcopy(value)
        elif channel == "yaml":
            file_part[key] = value
        else:
            cmd.append(f"--{key}={cmd_value(value)}")
    if case.duplicate is not None:
        cmd.append(f"--{case.duplicate[0]}={case.duplicate[1]}")
    files = []
    if file_part:
        path = env.tmp / "case.yaml"
        path.write_text(yaml.safe_dump(file_part))
        files.append(str(path))
    return Config(model=case.model, dataset="ml-slice", config_file_list=files, config_dict=config_dict,
                  cmd_args=cmd)


def build_run(config, env: Env):
    """(training loader, model) as recbole_dsl's quick_start prepares them (the dataset read once
    per model and copied, as Dataset.build is not re-entrant)."""
    name = config["model"]
    if name not in env.datasets:
        env.datasets[name] = create_dataset(config)
    train, _, _ = data_preparation(config, copy.deepcopy(env.datasets[name]))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(name)(config, train._dataset).to(config["device"])
    rec = config.plugin_settings.rec
    if rec is not None and rec.train_batch_mode == "user" and not model.rec_adapter.user_batches:
        train = UserGroupedTrainDataLoader.wrap(train, rec.positives_per_user)  # as RecLossTrainer.fit does
    return train, model


def train_one_batch(train, model) -> float:
    model.train()
    out = model.calculate_loss(next(iter(train)))
    loss = sum(out) if isinstance(out, tuple) else out
    assert torch.isfinite(loss).all(), f"non-finite loss {loss}"
    if loss.requires_grad:
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradients of {bad}"
    return float(loss.detach())


@lru_cache(maxsize=None)
def _combination_error(model: str, rec_loss: Optional[str], neg_sampler: str, data_path: str, tmp: str):
    """The key a Config of the combination alone is refused on (None: accepted)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_config(Case(model, rec_loss, neg_sampler, {}), Env(Path(data_path), Path(tmp)))
    except ConfigError as e:
        return e.key
    return None


def acceptable_keys(case: Case, env: Env) -> set:
    """The keys a ConfigError of the case may name: the keys it set, the keys they are checked
    against (RELATED), the key its combination alone is refused on, and the unknown key when the
    case sets strict_keys."""
    keys = set(case.values)
    for k in case.values:
        keys |= RELATED.get(k, set())
    base = _combination_error(case.model, case.rec_loss, case.neg_sampler, env.data_path, str(env.tmp))
    if base is not None:
        keys.add(base)
    if case.unknown is not None and "strict_keys" in case.values:
        keys.add(case.unknown[0])
    return keys


STATS: Counter = Counter()
KEYS_SEEN: Counter = Counter()


def check_case(case: Case, env: Env) -> str:
    """The property, for one case; returns "refused" or "trained"."""
    STATS["cases"] += 1
    KEYS_SEEN.update(list(case.values))
    allowed = acceptable_keys(case, env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = build_config(case, env)
            train, model = build_run(config, env)
        except ConfigError as e:
            assert e.key in allowed, f"ConfigError names {e.key!r}, expected one of {sorted(allowed)}: {e}"
            if case.duplicate is not None:
                assert e.key == case.duplicate[0], f"--{case.duplicate[0]} given twice, but the error is {e}"
            STATS["refused"] += 1
            return "refused"
        assert case.duplicate is None, f"--{case.duplicate[0]} given twice with different values was accepted"
        if case.unknown is not None:  # accepted, and the user is told that the key does nothing
            told = [w for w in caught if issubclass(w.category, UserWarning) and case.unknown[0] in str(w.message)]
            assert told, f"no warning names the unknown key {case.unknown[0]!r}"
        try:
            train_one_batch(train, model)
        except ConfigError as e:
            pytest.fail(f"ConfigError raised by the training batch, not before training: {e}")
    STATS["trained"] += 1
    return "trained"


# -- the tests ---------------------------------------------------------------------------------------
MAX_EXAMPLES = 300

# What the fuzz found, kept as explicit examples (each failed before its fix: the exception, or
# the NaN loss, is noted).
C = Case
FOUND = [
    C("BPR", None, "uniform", {"rec_loss": []}),  # TypeError: unhashable type (registry lookup)
    C("BPR", "SL", "uniform", {"neg_sampler": {}}, {"neg_sampler": "yaml"}),  # TypeError, idem
    C("BPR", "SL", "uniform", {"loss_tau": 1e-300}, {"loss_tau": "cmd"}),  # NaN loss (1 / tau overflows float32)
    C("BPR", "DSL", "uniform", {"loss_tau": 1e-300}),  # RuntimeError: value cannot be converted to float
    C("BPR", "BSL", "uniform", {"loss_tau": 1e300}, {"loss_tau": "yaml"}),  # NaN loss
    C("BPR", "BSL", "uniform", {"loss_tau_pos": 5e-324}),  # NaN loss
    C("BPR", "SLK", "uniform", {"slk_tau_w": 1e-300}),  # NaN loss
    C("BPR", "DSL", "uniform", {"dsl_kappa": -1e300}),  # NaN loss
    C("BPR", "DSL", "uniform", {"dsl_tau_range": 1e300, "dsl_gamma": 1e6}),  # NaN loss
    C("MultiVAE", "SL", "uniform", {"positives_per_user": 10**30}),  # OverflowError from torch
    C("BPR", "SL", "uniform", {"neg_num": 10**30, "exclude_positives": False}),  # ValueError from numpy
    C("BPR", "SL", "uniform", {"train_batch_mode": "user", "positives_per_user": 2**63 - 1}),  # IndexError
    C("BPR", "SL", "uniform", {"noise_seed": -1, "fn_pool_ratio": 0.1}, {"noise_seed": "cmd"}),  # ValueError
    C("BPR", "SL", "popularity", {"neg_pop_alpha": 1e300, "sl_log_q_correction": True}),  # NaN loss
    # RecBole evaluated command-line and config-dict strings with eval: ZeroDivisionError
    C("BPR", "SL", "uniform", {"neg_num": "1/0"}, {"neg_num": "cmd"}),
    C("BPR", "SL", "uniform", {"loss_tau": "1/0"}),
    # RecBole raised SyntaxError for a command-line key given twice
    C("BPR", "SL", "uniform", {"neg_num": 3}, {"neg_num": "cmd"}, duplicate=("neg_num", "4")),
    # an unknown key next to strict_keys (an error then, a warning otherwise)
    C("NeuMF", "BPR", "uniform", {"strict_keys": True}, unknown=("rec_los", "SL")),
    C("NeuMF", "BPR", "uniform", {}, unknown=("rec_los", "SL")),
]


@pytest.fixture(scope="module")
def env(slice_root, tmp_path_factory):
    return Env(slice_root, tmp_path_factory.mktemp("fuzz"))


def _with_examples(test):
    for case in reversed(FOUND):
        test = example(case=case)(test)
    return test


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck), print_blob=False)
@_with_examples
@given(case=cases())
def _fuzz(case, env):
    check_case(case, env)


def test_keys_are_derived_from_the_registries_and_property_files():
    assert {"rec_loss", "neg_sampler", "neg_num", "loss_tau", "dsl_kappa", "slk_k", "neg_pop_alpha",
            "all_block_size", "fn_noise_p", "pop_groups"} <= set(KEYS)
    for _, registry in (("rec_loss", LOSSES), ("neg_sampler", SAMPLERS)):
        for _, cls in registry.items():
            assert set(cls.params.values()) <= set(KEYS)
    for k in KEYS:
        assert VALID[k], f"{k}: no valid value found in the property files"


def test_fuzz_plugin_keys(env, record_property):
    """Every case trains one batch or is refused before training by a ConfigError naming its key."""
    STATS.clear()
    KEYS_SEEN.clear()
    _fuzz(env=env)
    print(f"\nfuzz: {STATS['cases']} cases ({STATS['trained']} trained one batch, {STATS['refused']} refused "
          f"with ConfigError); {len(KEYS_SEEN)} of {len(KEYS)} keys fuzzed")
    record_property("fuzz_cases", STATS["cases"])
    assert STATS["cases"] >= MAX_EXAMPLES + len(FOUND)
    assert STATS["trained"] > 0 and STATS["refused"] > 0
